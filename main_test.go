package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"
)

func TestParseConfig(t *testing.T) {
	f := func(env map[string]string, args []string, wantErr string, check func(c config) bool) {
		t.Helper()
		c, err := parseConfig(args, func(k string) string { return env[k] }, io.Discard)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("env %v args %v: unexpected error; got %v; want it to contain %q", env, args, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("env %v args %v: unexpected error %v", env, args, err)
		}
		if !check(c) {
			t.Fatalf("env %v args %v: unexpected config %+v", env, args, c)
		}
	}
	f(nil, nil, "", func(c config) bool {
		return c.Addr == ":8080" && c.WindowSize == 50 && c.MinSamples == 10 && c.ZThreshold == 5 && c.Detector == "ranges" &&
			c.MinStddev == 1e-9 && c.MaxBodyBytes == 1<<20 && c.LogLevel == "info" && c.Shards > 0
	})
	f(map[string]string{"WINDOW_SIZE": "20", "Z_THRESHOLD": "2.5", "SHARDS": "3", "LOG_LEVEL": "debug", "DRAIN_DELAY": "2s"}, nil, "",
		func(c config) bool {
			return c.WindowSize == 20 && c.ZThreshold == 2.5 && c.Shards == 3 && c.LogLevel == "debug" && c.DrainDelay == 2*time.Second
		})
	f(map[string]string{"WINDOW_SIZE": "20"}, []string{"-window-size", "30"}, "", func(c config) bool { return c.WindowSize == 30 })
	f(map[string]string{"ADDR": "127.0.0.1:9"}, nil, "", func(c config) bool { return c.Addr == "127.0.0.1:9" })
	f(map[string]string{"PPROF": "true"}, nil, "", func(c config) bool { return c.Pprof })
	f(nil, nil, "", func(c config) bool {
		return c.ReadTimeout == 30*time.Second && c.WriteTimeout == 30*time.Second && c.IdleTimeout == time.Minute
	})
	f(map[string]string{"READ_TIMEOUT": "2s", "IDLE_TIMEOUT": "90s"}, []string{"-write-timeout", "500ms"}, "", func(c config) bool {
		return c.ReadTimeout == 2*time.Second && c.WriteTimeout == 500*time.Millisecond && c.IdleTimeout == 90*time.Second
	})
	for env, val := range map[string]string{
		"WINDOW_SIZE":    "1",
		"MIN_SAMPLES":    "x",
		"Z_THRESHOLD":    "-1",
		"MIN_STDDEV":     "0",
		"SHARDS":         "0",
		"MAX_BODY_BYTES": "1e6",
		"LOG_LEVEL":      "loud",
		"DRAIN_DELAY":    "5",
		"QUEUE_LEN":      "-3",
		"PPROF":          "maybe",
		"READ_TIMEOUT":   "0s",
		"WRITE_TIMEOUT":  "30",
		"IDLE_TIMEOUT":   "48h",
	} {
		f(map[string]string{env: val}, nil, "invalid "+env+"=", nil)
	}
	f(map[string]string{"Z_THRESHOLD": "NaN"}, nil, "invalid Z_THRESHOLD", nil)
	f(nil, []string{"-shards", "0"}, "-shards", nil)
	f(map[string]string{"MIN_SAMPLES": "60"}, nil, "MIN_SAMPLES=60 exceeds WINDOW_SIZE=50", nil)
	f(map[string]string{"MIN_SAMPLES": "60", "DETECTOR": "ewma"}, nil, "", func(c config) bool { return c.shardOptions().Validate() == nil })
	f(nil, []string{"extra"}, "unexpected argument", nil)
	f(map[string]string{"ALERT_COOLDOWN": "10m"}, nil, "", func(c config) bool {
		o := c.shardOptions()
		return c.Cooldown == 0 && c.CooldownTime == 10*time.Minute && o.Cooldown < 0 && o.CooldownTime == 10*time.Minute && o.Validate() == nil
	})
	f(map[string]string{"ALERT_COOLDOWN": "10 minutes"}, nil, "invalid ALERT_COOLDOWN", nil)
	f(map[string]string{"PEERS": "127.0.0.1:1", "SELF_ADDR": "127.0.0.1:1", "INGEST_TOKENS": "0123456789abcdefgh"}, nil, "needs CLUSTER_TOKEN", nil)
	f(map[string]string{"PEERS": "127.0.0.1:1", "SELF_ADDR": "127.0.0.1:1", "INGEST_TOKENS_FILE": "/x"}, nil, "needs CLUSTER_TOKEN", nil)
	f(map[string]string{"ALERT_COOLDOWN": "-3"}, nil, "invalid ALERT_COOLDOWN", nil)
	f(nil, nil, "", func(c config) bool {
		return c.Detector == "ranges" && c.Cooldown == 50 && c.StepFloor == 0.5 && c.shardOptions().Validate() == nil
	})
	f(map[string]string{"DETECTOR": "ewma", "ALERT_COOLDOWN": "0", "STEP_FLOOR": "0"}, nil, "", func(c config) bool {
		o := c.shardOptions()
		return o.Detector == detect.EWMA && o.Cooldown < 0 && o.StepFloor < 0
	})
	f(map[string]string{"STEP_FLOOR": "-1"}, nil, "invalid STEP_FLOOR=", nil)
	f(map[string]string{"DETECTOR": "median"}, nil, "invalid DETECTOR=", nil)
	f(nil, nil, "", func(c config) bool {
		return c.MaxStreams == shard.DefaultMaxStreams && c.shardOptions().MaxStreams == c.MaxStreams
	})
	f(map[string]string{"MAX_STREAMS_PER_DEVICE": "12"}, nil, "", func(c config) bool { return c.shardOptions().MaxStreams == 12 })
	f(map[string]string{"MAX_STREAMS_PER_DEVICE": "0"}, nil, "invalid MAX_STREAMS_PER_DEVICE=", nil)
	f(map[string]string{"MIN_STDDEV": "1e-200"}, nil, "invalid MIN_STDDEV=", nil) // z would overflow
	f(map[string]string{"MIN_STDDEV": "1e-150"}, nil, "", func(c config) bool { return c.MinStddev == 1e-150 })
	f(map[string]string{"REDIS_ADDR": "127.0.0.1:1", "SNAPSHOT_TTL": "10m"}, nil, "SNAPSHOT_TTL=10m0s must exceed IDLE_EVICT=15m0s", nil)
	f(map[string]string{"REDIS_ADDR": "127.0.0.1:1", "SNAPSHOT_TTL": "20m", "IDLE_EVICT": "5m"}, nil, "", func(c config) bool { return c.SnapshotTTL == 20*time.Minute })
	f(map[string]string{"SNAPSHOT_TTL": "10m"}, nil, "", func(c config) bool { return true }) // no Redis, no eviction
	f(map[string]string{}, nil, "", func(c config) bool { return c.SnapshotMaxBusy == 0.25 })
	f(map[string]string{"SNAPSHOT_MAX_BUSY": "1"}, nil, "", func(c config) bool { return c.SnapshotMaxBusy == 1 })
	f(map[string]string{"SNAPSHOT_MAX_BUSY": "0"}, nil, "invalid SNAPSHOT_MAX_BUSY=", nil)
	f(map[string]string{}, nil, "", func(c config) bool { return c.HistoryLen == 100 && c.shardOptions().HistoryLen == 100 })
	f(map[string]string{"HISTORY_LEN": "10"}, nil, "", func(c config) bool { return c.shardOptions().HistoryLen == 10 })
	f(map[string]string{"HISTORY_LEN": "0"}, nil, "invalid HISTORY_LEN=", nil)
	f(map[string]string{"SNAPSHOT_MAX_BUSY": "1.5"}, nil, "invalid SNAPSHOT_MAX_BUSY=", nil)
	f(map[string]string{"ADDR": "999.999.999.999:8080"}, nil, "invalid ADDR=", nil)
	f(map[string]string{"ADDR": "10.0.0.1:8080"}, nil, "", func(c config) bool { return c.Addr == "10.0.0.1:8080" })
	f(map[string]string{"ADDR": "pod-1.svc.cluster.local:8080"}, nil, "", func(c config) bool { return true })
	f(map[string]string{"MAX_STREAMS_PER_DEVICE": "65537"}, nil, "invalid MAX_STREAMS_PER_DEVICE=", nil)
	f(map[string]string{"ALERT_COOLDOWN": "-1"}, nil, "invalid ALERT_COOLDOWN=", nil)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", `{"rules":[{"match":"temp*","detector":"ewma","window":100},{"match":"cpu","threshold":4}]}`)
	f(map[string]string{"DETECTOR_CONFIG": good}, nil, "", func(c config) bool {
		return len(c.Rules) == 2 && c.Rules[0].Params.Kind == detect.EWMA && c.Rules[0].Params.Window == 100 &&
			c.Rules[1].Params.Threshold == 4 && c.Rules[1].Params.Window == 50
	})
	bad := write("bad.json", `{"rules":[{"match":"temp*"},{"match":"hum","window":1}]}`)
	f(map[string]string{"DETECTOR_CONFIG": bad}, nil, `rule 2 (match "hum"): window=1`, nil)
	f(map[string]string{"DETECTOR_CONFIG": filepath.Join(dir, "missing.json")}, nil, "cannot read DETECTOR_CONFIG", nil)

	// A flag overrides an invalid environment value; one not overridden still fails.
	f(map[string]string{"WINDOW_SIZE": "abc"}, []string{"-window-size", "30"}, "", func(c config) bool { return c.WindowSize == 30 })
	f(map[string]string{"READ_TIMEOUT": "0s", "PPROF": "maybe"}, []string{"-read-timeout=2s", "-pprof=false"}, "", func(c config) bool {
		return c.ReadTimeout == 2*time.Second && !c.Pprof
	})
	f(map[string]string{"WINDOW_SIZE": "abc"}, []string{"-shards", "2"}, "invalid WINDOW_SIZE=", nil)
	f(map[string]string{"WINDOW_SIZE": "20"}, []string{"-min-samples", "30"}, "MIN_SAMPLES=30 exceeds WINDOW_SIZE=20", nil)

	// ADDR is checked offline: host (empty, an IP or a name) and a port of 0-65535 or a known service.
	for _, addr := range []string{":8080", "127.0.0.1:0", "127.0.0.1:", "[::1]:8080", "[fe80::1%lo]:80", "localhost:8080", "0.0.0.0:65535", ":http", "my-host.example:443"} {
		f(map[string]string{"ADDR": addr}, nil, "", func(c config) bool { return c.Addr == addr })
	}
	for _, addr := range []string{"8080", "localhost", ":65536", ":-1", ":no-such-service-xyz", "a b:80", "[::1:80", "host:8080:1", "bad_host!:80", "-x.example:80"} {
		f(map[string]string{"ADDR": addr}, nil, "invalid ADDR=", nil)
	}
	f(map[string]string{"ADDR": ":8081"}, []string{"-addr", "127.0.0.1:99999"}, "-addr", nil)
	f(nil, []string{"-addr", ""}, "-addr", nil)
	f(map[string]string{"ADDR": "nonsense"}, []string{"-addr", "127.0.0.1:9090"}, "", func(c config) bool { return c.Addr == "127.0.0.1:9090" })

	f(map[string]string{"REDIS_PASSWORD": "s3cret"}, nil, "", func(c config) bool { return c.RedisPassword == "s3cret" })
	f(map[string]string{"REDIS_PASSWORD": "s3cret"}, []string{"-redis-password", "other"}, "", func(c config) bool { return c.RedisPassword == "other" })

	// -h shows the built-in defaults, never the environment's values, and no secret.
	var usage bytes.Buffer
	env := map[string]string{"ADDR": "127.0.0.1:7777", "WINDOW_SIZE": "777", "REDIS_PASSWORD": "hunter2-secret", "REDIS_ADDR": "redis.internal:6379"}
	if _, err := parseConfig([]string{"-h"}, func(k string) string { return env[k] }, &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: unexpected error %v", err)
	}
	for _, want := range []string{"(default :8080)", "(default 50)", "-redis-password"} {
		if !strings.Contains(usage.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, usage.String())
		}
	}
	for _, v := range env {
		if strings.Contains(usage.String(), v) {
			t.Errorf("-h output shows the environment value %q:\n%s", v, usage.String())
		}
	}
}

// buildService compiles the service once per test binary run.
// SERVICE_BIN runs the tests against a binary built elsewhere instead, e.g.
// from an older commit, to check that a regression test fails there.
func buildService(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("SERVICE_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "ai-load-service")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestInvalidEnvExits(t *testing.T) {
	bin := buildService(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "WINDOW_SIZE=abc")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("unexpected exit: %v", err)
	}
	if !bytes.Contains(out, []byte("WINDOW_SIZE")) {
		t.Fatalf("error does not name the variable: %s", out)
	}
}

// TestGracefulStop runs the real binary: SIGTERM turns /ready to 503 for
// DRAIN_DELAY, an in-flight request still completes, and the process exits 0
// well within 10 s.
func TestGracefulStop(t *testing.T) {
	bin := buildService(t)
	addr := freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-addr", addr)
	cmd.Env = append(os.Environ(), "DRAIN_DELAY=3s", "LOG_LEVEL=info") // long enough for a loaded CI box to ask /ready within it
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck
	base := "http://" + addr
	get := func(path string) int {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(10 * time.Second)
	for get("/ready") != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("service never became ready:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Post(base+"/api/v1/ingest", "application/json",
		strings.NewReader(`{"device":"d1","metrics":{"t":1}}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ingest failed: %v %v", err, resp)
	}
	resp.Body.Close()

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if code := get("/ready"); code != 503 {
		t.Fatalf("unexpected /ready during drain; got %d; want 503", code)
	}
	if code := get("/health"); code != 200 {
		t.Fatalf("unexpected /health during drain; got %d; want 200", code)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("unexpected exit: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("did not exit within 10s of SIGTERM:\n%s", logs.String())
	}
	took := time.Since(start)
	for _, want := range []string{`"message":"serving"`, `"message":"stopping"`, `"message":"http server stopped"`, `"message":"shards stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %s:\n%s", want, logs.String())
		}
	}
	if strings.Count(logs.String(), "\n") > 10 {
		t.Fatalf("too many log lines at info level (per-request logging?):\n%s", logs.String())
	}
	t.Logf("exit %v after SIGTERM", took)
}

// TestConnectionTimeouts runs the binary with short READ_TIMEOUT and
// IDLE_TIMEOUT: a half-sent request gets a 408 JSON error, an idle
// keep-alive connection is closed, and /metrics counts both.
func TestConnectionTimeouts(t *testing.T) {
	bin := buildService(t)
	s := startService(t, bin, "READ_TIMEOUT=300ms", "IDLE_TIMEOUT=300ms")
	addr := strings.TrimPrefix(s.base, "http://")
	exchange := func(send string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("connection not closed by the service: %v (read %q)", err, b)
		}
		return string(b)
	}
	cut := exchange("POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"device\":")
	if !strings.HasPrefix(cut, "HTTP/1.1 408") || !strings.Contains(cut, `{"error":"request not received within 300ms (READ_TIMEOUT)`) {
		t.Fatalf("half-sent request: want a 408 JSON error; got %q", cut)
	}
	idle := exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	if !strings.HasPrefix(idle, "HTTP/1.1 200") || strings.Count(idle, "HTTP/1.1") != 1 {
		t.Fatalf("idle connection: want one 200, then a quiet close; got %q", idle)
	}
	// Other connections (the readiness probes) may have timed out too.
	m := s.get(t, "/metrics")
	for _, name := range []string{`http_connection_timeouts_total{phase="read"}`, `http_connection_timeouts_total{phase="idle"}`, "http_open_connections"} {
		var v float64
		for _, line := range strings.Split(m, "\n") {
			if rest, ok := strings.CutPrefix(line, name+" "); ok {
				v, _ = strconv.ParseFloat(rest, 64)
			}
		}
		if v < 1 {
			t.Fatalf("/metrics: want %s >= 1; got %v:\n%s", name, v, m)
		}
	}
}

// startRedis runs a real redis-server on a free loopback port for the test.
func startRedis(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	runRedis(t, addr, t.TempDir())
	return addr
}

// runRedis starts redis-server on addr with an append-only file in dir (so
// a restart keeps its data) and returns its command; it is killed at the
// end of the test.
func runRedis(t *testing.T, addr, dir string) *exec.Cmd {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install it (apt-get install -y redis-server); .ci/run does")
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
	}
	t.Fatalf("redis-server on %s did not start", addr)
	return nil
}

// service is a running copy of the binary.
type service struct {
	cmd  *exec.Cmd
	base string
	logs *bytes.Buffer
}

func startService(t *testing.T, bin string, env ...string) *service {
	t.Helper()
	return startServiceAt(t, bin, freeAddr(t), env...)
}

// startServiceAt runs the binary on addr and waits until it is ready.
func startServiceAt(t *testing.T, bin, addr string, env ...string) *service {
	t.Helper()
	return startServiceArgs(t, bin, addr, nil, env...)
}

// startServiceArgs is startServiceAt with command-line arguments.
func startServiceArgs(t *testing.T, bin, addr string, args []string, env ...string) *service {
	t.Helper()
	s := &service{base: "http://" + addr, logs: new(bytes.Buffer)}
	s.cmd = exec.Command(bin, append([]string{"-addr", addr}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill() }) //nolint:errcheck
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(s.base + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("service never became ready:\n%s", s.logs)
		}
	}
}

// post sends an ingest request, fails the test unless it is applied, and
// returns the answer.
func (s *service) post(t *testing.T, body string) []byte {
	t.Helper()
	resp, err := http.Post(s.base+"/api/v1/ingest", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("ingest: %d %s", resp.StatusCode, b)
	}
	return b
}

func (s *service) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get(s.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

func (s *service) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	err := s.cmd.Wait()
	if sig == syscall.SIGTERM && err != nil {
		t.Fatalf("unexpected exit after SIGTERM: %v\n%s", err, s.logs)
	}
}

// fleetBatch is one sample for each of n devices; round varies the values.
func fleetBatch(n, round int) string {
	var parts []string
	for d := range n {
		v := float64((d*7+round*3)%11) + float64(d)/10
		if round == 15 && d%5 == 0 {
			v += 100 // spikes, so histories are not empty
		}
		parts = append(parts, fmt.Sprintf(`{"device":"dev-%d","ts":%d,"metrics":{"temp":%g,"hum":%d}}`, d, 1000+round, v, 40+round%3))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// devicesState reads every device route and anomaly history.
func devicesState(t *testing.T, s *service, n int) []string {
	var out []string
	for d := range n {
		out = append(out, s.get(t, fmt.Sprintf("/api/v1/devices/dev-%d", d)), s.get(t, fmt.Sprintf("/api/v1/devices/dev-%d/anomalies", d)))
	}
	return out
}

// TestRestartsKeepState runs the binary against a real Redis: after a
// graceful stop every device reads back identical; after SIGKILL, what was
// snapshotted more than one interval before the kill is all there.
func TestRestartsKeepState(t *testing.T) {
	bin := buildService(t)
	redis := "REDIS_ADDR=" + startRedis(t)
	// An hour between snapshots: only the final one on SIGTERM can save it.
	env := []string{redis, "SNAPSHOT_INTERVAL=1h", "LOG_LEVEL=warn"}
	const devices = 40

	a := startService(t, bin, env...)
	for round := range 30 {
		a.post(t, fleetBatch(devices, round))
	}
	want := devicesState(t, a, devices)
	a.stop(t, syscall.SIGTERM)
	env = []string{redis, "SNAPSHOT_INTERVAL=100ms", "LOG_LEVEL=warn"}
	b := startService(t, bin, env...)
	got := devicesState(t, b, devices)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("state differs after a graceful restart:\ngot  %s\nwant %s", got[i], want[i])
		}
	}
	if !strings.Contains(want[0], `"count":30`) || !strings.Contains(strings.Join(want, ""), `"value":1`) {
		t.Fatalf("test data too thin: %s", want[0])
	}

	for round := 30; round < 40; round++ {
		b.post(t, fleetBatch(devices, round))
	}
	want = devicesState(t, b, devices)
	time.Sleep(400 * time.Millisecond) // several snapshot intervals
	b.stop(t, syscall.SIGKILL)
	c := startService(t, bin, env...)
	got = devicesState(t, c, devices)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("state lost after SIGKILL:\ngot  %s\nwant %s", got[i], want[i])
		}
	}
	c.stop(t, syscall.SIGTERM)
}

// TestRedisOutageUnderLoad kills Redis while clients post and starts it
// again: every request still gets 200, and afterwards a restarted service
// reads every device back as it was.
func TestRedisOutageUnderLoad(t *testing.T) {
	bin := buildService(t)
	addr, dir := freeAddr(t), t.TempDir()
	redis := runRedis(t, addr, dir)
	env := []string{"REDIS_ADDR=" + addr, "SNAPSHOT_INTERVAL=100ms", "LOG_LEVEL=error"}
	const devices = 30
	s := startService(t, bin, env...)
	round := 0
	post := func(n int) {
		for range n {
			s.post(t, fleetBatch(devices, round)) // fails the test on any non-200
			round++
		}
	}
	post(5)
	redis.Process.Kill() //nolint:errcheck
	redis.Wait()         //nolint:errcheck
	post(20)
	for _, path := range []string{"/ready", "/health"} {
		if got := s.get(t, path); !strings.HasPrefix(got, "200 ") {
			t.Fatalf("%s during the Redis outage: %s", path, got)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m := s.get(t, "/metrics")
		if strings.Contains(m, "snapshot_failures_total") && !strings.Contains(m, "snapshot_failures_total 0\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outage not visible in /metrics")
		}
	}
	runRedis(t, addr, dir)
	post(5)
	want := devicesState(t, s, devices)
	time.Sleep(time.Second) // reconnect and write what the outage held back
	s.stop(t, syscall.SIGKILL)
	again := startService(t, bin, env...)
	got := devicesState(t, again, devices)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("state lost across the outage:\ngot  %s\nwant %s", got[i], want[i])
		}
	}
	if !strings.Contains(want[0], `"count":30`) {
		t.Fatalf("unexpected state %s", want[0])
	}
}

// redisDo sends one command to Redis over RESP and returns its first reply
// line, so tests need no client library.
func redisDo(t *testing.T, addr string, args ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c, "$%d\r\n%s\r\n", len(a), a)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	return strings.TrimSpace(line)
}

// TestStopWritesUnrestoredDevices: Redis down at start past the connect
// grace, 20 new devices answered 200, Redis started, SIGTERM 0.3 s later:
// all 20 must be in Redis after exit (there were 0, and the log said the
// final snapshot was written).
func TestStopWritesUnrestoredDevices(t *testing.T) {
	bin := buildService(t)
	addr, dir := freeAddr(t), t.TempDir()
	env := []string{"REDIS_ADDR=" + addr, "SNAPSHOT_INTERVAL=1h", "LOG_LEVEL=info"}
	s := startService(t, bin, env...)
	time.Sleep(2200 * time.Millisecond) // past the 2 s connect grace: loads fail at once
	for i := range 20 {
		s.post(t, fmt.Sprintf(`{"device":"early-%d","metrics":{"t":%d}}`, i, i))
	}
	runRedis(t, addr, dir)
	time.Sleep(300 * time.Millisecond)
	s.stop(t, syscall.SIGTERM)
	if got := redisDo(t, addr, "DBSIZE"); got != ":20" {
		t.Fatalf("redis holds %s keys after the stop; want :20\n%s", got, s.logs)
	}
	if !strings.Contains(s.logs.String(), `"written":20`) {
		t.Fatalf("log does not report the 20 devices written:\n%s", s.logs)
	}
}

// halfRequest opens a connection and sends all of an ingest request but
// its last bytes; finish sends them and returns the status line.
func halfRequest(t *testing.T, base, body string) (finish func() string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := fmt.Sprintf("POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := io.WriteString(c, req[:len(req)-3]); err != nil {
		t.Fatal(err)
	}
	return func() string {
		if _, err := io.WriteString(c, req[len(req)-3:]); err != nil {
			return "write: " + err.Error()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "read: " + err.Error()
		}
		return strings.TrimSpace(line)
	}
}

// TestNoAckLostAfterStopTimeout: requests still arriving when STOP_TIMEOUT
// runs out, with Redis paused for writes, were applied after the final
// snapshot was taken and still answered 200; after a restart their samples
// were gone. Each must now be refused (503) or be in Redis after exit.
func TestNoAckLostAfterStopTimeout(t *testing.T) {
	bin := buildService(t)
	addr := startRedis(t)
	env := []string{"REDIS_ADDR=" + addr, "SNAPSHOT_INTERVAL=1h", "STOP_TIMEOUT=1s", "LOG_LEVEL=info"}
	s := startService(t, bin, env...)
	s.post(t, `[{"device":"late-1","metrics":{"t":1}},{"device":"late-2","metrics":{"t":1}}]`)
	finish := []func() string{
		halfRequest(t, s.base, `{"device":"late-1","metrics":{"t":2}}`),
		halfRequest(t, s.base, `{"device":"late-2","metrics":{"t":2}}`),
	}
	if got := redisDo(t, addr, "CLIENT", "PAUSE", "2500", "WRITE"); got != "+OK" {
		t.Fatalf("CLIENT PAUSE: %s", got)
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1600 * time.Millisecond)
	var status []string
	for _, f := range finish {
		status = append(status, f())
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.logs)
	}
	again := startService(t, bin, env...)
	for i, st := range status {
		dev := fmt.Sprint("late-", i+1)
		got := again.get(t, "/api/v1/devices/"+dev)
		switch {
		case strings.Contains(st, " 200 "):
			if !strings.Contains(got, `"count":2`) {
				t.Fatalf("%s: answered %q, but after a restart it holds %s\n%s", dev, st, got, s.logs)
			}
		case strings.Contains(st, " 503 "):
			if !strings.Contains(got, `"count":1`) {
				t.Fatalf("%s: refused, but after a restart it holds %s", dev, got)
			}
		default:
			t.Fatalf("%s: unexpected answer %q", dev, st)
		}
	}
	t.Logf("answers after the stop deadline: %v", status)
}

// TestHelpHidesEnvironment runs the binary with -h: it exits 0 and shows
// the built-in defaults, not the environment's values, and no secret.
func TestHelpHidesEnvironment(t *testing.T) {
	bin := buildService(t)
	cmd := exec.Command(bin, "-h")
	envValues := []string{"hunter2-secret", "127.0.0.1:7777", "777", "redis.internal"}
	cmd.Env = append(os.Environ(), "REDIS_PASSWORD=hunter2-secret", "ADDR=127.0.0.1:7777", "WINDOW_SIZE=777", "REDIS_ADDR=redis.internal:6379")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("-h: unexpected exit %v\n%s", err, out)
	}
	for _, s := range envValues {
		if bytes.Contains(out, []byte(s)) {
			t.Errorf("-h output shows the environment value %q", s)
		}
	}
	for _, want := range []string{"-addr", "(default :8080)", "(default 50)", "-redis-password"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("-h output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("-h output:\n%s", out)
	}
}

// TestInvalidAddrExits2: a bad ADDR is a configuration error like any
// other (status 2, message naming it), not a failure to serve (status 1).
func TestInvalidAddrExits2(t *testing.T) {
	bin := buildService(t)
	for _, c := range []struct {
		args []string
		env  string
		name string
	}{
		{nil, "ADDR=localhost", "ADDR"},
		{nil, "ADDR=:99999", "ADDR"},
		{[]string{"-addr", "127.0.0.1:no-such-service-xyz"}, "", "-addr"},
	} {
		// Bounded, should a bad address ever be accepted and served.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, bin, c.args...)
		cmd.Env = os.Environ()
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.CombinedOutput()
		cancel()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%v %s: unexpected exit %v; want status 2\n%s", c.args, c.env, err, out)
			continue
		}
		if !bytes.Contains(out, []byte(c.name)) {
			t.Errorf("%v %s: message does not name %s:\n%s", c.args, c.env, c.name, out)
		}
	}
}

// TestExpectContinueTooLarge: a request with Expect: 100-continue and a
// declared body over MAX_BODY_BYTES gets the 413 JSON error at once, with
// no 100 Continue inviting the body; a small one still gets 100 Continue.
func TestExpectContinueTooLarge(t *testing.T) {
	bin := buildService(t)
	s := startService(t, bin, "MAX_BODY_BYTES=1024")
	addr := strings.TrimPrefix(s.base, "http://")
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	const head = "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"

	c, _ := dial()
	if _, err := fmt.Fprintf(c, head, 5000); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c) // the service closes: the client may be sending the body already
	if err != nil {
		t.Fatalf("oversized: no close: %v (read %q)", err, got)
	}
	if !strings.HasPrefix(string(got), "HTTP/1.1 413 ") || strings.Contains(string(got), "100 Continue") ||
		!strings.Contains(string(got), `{"error":"request body exceeds 1024 bytes`) {
		t.Fatalf("oversized: want a 413 JSON error and no 100 Continue; got %q", got)
	}

	body := `{"device":"d1","metrics":{"t":1}}`
	c, br := dial()
	if _, err := fmt.Fprintf(c, head, len(body)); err != nil {
		t.Fatal(err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("small body: want 100 Continue; got %q, %v", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil { // the blank line ending the interim response
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("small body: want 200; got %v, %v", resp, err)
	}
	resp.Body.Close()
	m := s.get(t, "/metrics")
	if !strings.Contains(m, `requests_total{route="/api/v1/ingest",method="POST",status="413"} 1`) {
		t.Fatalf("/metrics does not count the 413 under its route:\n%s", m)
	}
}

// checkExposition lists what is wrong with a Prometheus text page: every
// sample must belong to a family with exactly one TYPE line, given before
// its samples; a family's lines must be contiguous; no series may repeat.
func checkExposition(page string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	types := map[string]string{}
	helps := map[string]int{}
	done := map[string]bool{}    // families whose block has ended
	sampled := map[string]bool{} // families with a sample so far
	series := map[string]bool{}
	current := ""
	enter := func(family string) {
		if family == current {
			return
		}
		if done[family] {
			bad("family %s is split: its lines are not contiguous", family)
		}
		if current != "" {
			done[current] = true
		}
		current = family
	}
	nameRe := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelRe := regexp.MustCompile(`^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"$`)
	for i, line := range strings.Split(strings.TrimSuffix(page, "\n"), "\n") {
		at := fmt.Sprintf("line %d %q", i+1, line)
		switch {
		case line == "":
			bad("%s: empty line", at)
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line)
			if len(f) != 4 || !nameRe.MatchString(f[2]) {
				bad("%s: malformed TYPE line", at)
				continue
			}
			switch f[3] {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				bad("%s: unknown type %s", at, f[3])
			}
			if _, dup := types[f[2]]; dup {
				bad("%s: second TYPE line for %s", at, f[2])
			}
			if sampled[f[2]] {
				bad("%s: TYPE line after samples of %s", at, f[2])
			}
			types[f[2]] = f[3]
			enter(f[2])
		case strings.HasPrefix(line, "# HELP "):
			f := strings.Fields(line)
			if len(f) < 3 {
				bad("%s: malformed HELP line", at)
				continue
			}
			if helps[f[2]]++; helps[f[2]] > 1 {
				bad("%s: second HELP line for %s", at, f[2])
			}
			enter(f[2])
		case strings.HasPrefix(line, "#"):
		default:
			name, rest, labels := line, "", ""
			if i := strings.IndexAny(line, "{ "); i >= 0 {
				name, rest = line[:i], line[i:]
			}
			if strings.HasPrefix(rest, "{") {
				j := strings.LastIndex(rest, "}")
				if j < 0 {
					bad("%s: unterminated labels", at)
					continue
				}
				labels, rest = rest[1:j], rest[j+1:]
			}
			if !nameRe.MatchString(name) {
				bad("%s: invalid metric name", at)
				continue
			}
			var pairs []string
			if labels != "" {
				for _, p := range splitLabels(labels) {
					if !labelRe.MatchString(strings.TrimSpace(p)) {
						bad("%s: malformed label %q", at, p)
					}
					pairs = append(pairs, strings.TrimSpace(p))
				}
			}
			sort.Strings(pairs)
			v := strings.Fields(rest)
			if len(v) < 1 || len(v) > 2 {
				bad("%s: want a value and an optional timestamp", at)
				continue
			}
			if _, err := strconv.ParseFloat(v[0], 64); err != nil {
				bad("%s: value: %v", at, err)
			}
			family := name
			if _, ok := types[name]; !ok {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					base, cut := strings.CutSuffix(name, suffix)
					if cut && (types[base] == "histogram" || types[base] == "summary" && suffix != "_bucket") {
						family = base
					}
				}
			}
			if _, ok := types[family]; !ok {
				bad("%s: sample of %s has no TYPE line", at, name)
			} else if types[family] == "histogram" && family == name {
				bad("%s: histogram %s sample without _bucket, _sum or _count", at, name)
			}
			enter(family)
			sampled[family] = true
			key := name + "{" + strings.Join(pairs, ",") + "}"
			if series[key] {
				bad("%s: duplicate series %s", at, key)
			}
			series[key] = true
		}
	}
	return problems
}

// splitLabels splits a label list on the commas outside quoted values.
func splitLabels(s string) []string {
	var out []string
	inQuote, esc, start := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case esc:
			esc = false
		case c == '\\':
			esc = true
		case c == '"':
			inQuote = !inQuote
		case c == ',' && !inQuote:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

func TestCheckExposition(t *testing.T) {
	f := func(page string, want string) {
		t.Helper()
		got := strings.Join(checkExposition(page), "\n")
		if want == "" && got != "" || want != "" && !strings.Contains(got, want) {
			t.Fatalf("checkExposition(%q) = %q; want %q", page, got, want)
		}
	}
	f("# HELP a\n# TYPE a counter\na 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "")
	f("# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n", "")
	f("a 1\n", "has no TYPE line")
	f("# TYPE a gauge\na{x=\"1\"} 1\n# TYPE a gauge\na{x=\"2\"} 1\n", "second TYPE line")
	f("# TYPE a gauge\na{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n", "duplicate series")
	f("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 1\n", "not contiguous")
	f("# TYPE h histogram\nh 1\n", "without _bucket")
	f("# HELP a\na 1\n# TYPE a gauge\n", "TYPE line after samples of a")
	f("# TYPE a gauge\na{x=\"1,2\"} one\n", "value")
	f("# TYPE a gauge\na{x=1} 1\n", "malformed label")
}

// TestMetricsExposition runs the binary with Redis (so the persister's set
// is on the page) and checks the whole /metrics page: checkExposition, and
// promtool when installed.
func TestMetricsExposition(t *testing.T) {
	bin := buildService(t)
	s := startService(t, bin, "REDIS_ADDR="+startRedis(t), "SNAPSHOT_INTERVAL=50ms", "MAX_BODY_BYTES=4096", "LOG_LEVEL=warn")
	s.post(t, fleetBatch(5, 0))
	for _, path := range []string{"/no/such/route", "/api/v1/devices/dev-1", "/api/v1/devices/nobody"} {
		s.get(t, path)
	}
	resp, err := http.Post(s.base+"/api/v1/ingest", "application/json", strings.NewReader(strings.Repeat(" ", 5000)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	time.Sleep(200 * time.Millisecond) // snapshot rounds, so their histogram has samples
	page := strings.TrimPrefix(s.get(t, "/metrics"), "200 ")
	for _, p := range checkExposition(page) {
		t.Error(p)
	}
	for family, typ := range map[string]string{
		"requests_total": "counter", "request_duration_seconds": "histogram", "devices_evicted_total": "counter",
		"rolling_average_current": "gauge", "http_connection_timeouts_total": "counter", "http_open_connections": "gauge",
		"snapshot_duration_seconds": "histogram", "snapshots_written_total": "counter", "redis_connected": "gauge",
		"go_goroutines": "gauge", "process_resident_memory_bytes": "gauge",
	} {
		if !strings.Contains(page, "\n# TYPE "+family+" "+typ+"\n") {
			t.Errorf("no TYPE %s line for %s", typ, family)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", page)
	}

	t.Run("promtool", func(t *testing.T) {
		if _, err := exec.LookPath("promtool"); err != nil {
			t.Fatal("promtool not found: make test installs it (Debian package prometheus)")
		}
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(page)
		out, err := cmd.CombinedOutput()
		// Exit status 1 is a page promtool cannot parse; 3 is lint findings,
		// judged line by line below.
		if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			family, problem, _ := strings.Cut(line, " ")
			switch {
			case line == "":
			case problem == "no help text":
				// VictoriaMetrics/metrics writes HELP lines without text.
			case strings.HasPrefix(family, "go_") || strings.HasPrefix(family, "process_"):
				// Names chosen by VictoriaMetrics/metrics, not by this service.
			default:
				t.Errorf("promtool: %s", line)
			}
		}
	})
}

// devicesHeld reads the devices s holds in memory from /api/v1/cluster.
func (s *service) devicesHeld(t *testing.T) int {
	t.Helper()
	var info struct{ Devices int }
	resp, err := http.Get(s.base + "/api/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	return info.Devices
}

// TestVersionStamped: the version given at build time (as the Dockerfile
// gives it) is in the start-up log line and in build_info.
func TestVersionStamped(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ai-load-service")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=1.2.3-test", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	s := startService(t, bin)
	if got := s.get(t, "/metrics"); !strings.Contains(got, `build_info{version="1.2.3-test",goversion="go`) {
		t.Fatalf("no build_info with the version in /metrics:\n%s", got)
	}
	s.stop(t, syscall.SIGTERM) // the log is read once the process is done writing it
	if !strings.Contains(s.logs.String(), `"version":"1.2.3-test"`) {
		t.Fatalf("the start-up log does not say the version:\n%s", s.logs)
	}
}

// TestManifestSettings: every variable the manifests set is one the binary
// reads (or the Go runtime does), and every setting in the README's table
// is in the ConfigMap, set or as a commented default.
func TestManifestSettings(t *testing.T) {
	read := map[string]bool{}
	if _, err := parseConfig(nil, func(k string) string { read[k] = true; return "" }, io.Discard); err != nil {
		t.Fatal(err)
	}
	runtimeVars := map[string]bool{"GOMAXPROCS": true, "GOMEMLIMIT": true}
	helpers := map[string]bool{"POD_IP": true, "GOMEMLIMIT_MIB": true} // used inside other values
	cm, err := os.ReadFile("manifests/base/config.env")
	if err != nil {
		t.Fatal(err)
	}
	dep, err := os.ReadFile("manifests/base/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)=`).FindAllSubmatch(cm, -1) {
		set[string(m[1])] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^ +- name: ([A-Z][A-Z0-9_]*)$`).FindAllSubmatch(dep, -1) {
		set[string(m[1])] = true
	}
	for k := range set {
		if !read[k] && !runtimeVars[k] && !helpers[k] {
			t.Errorf("the manifests set %s, which the binary does not read", k)
		}
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#? ?([A-Z][A-Z0-9_]*)=`).FindAllSubmatch(cm, -1) {
		listed[string(m[1])] = true
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| `([A-Z][A-Z0-9_]*)` \\| `-").FindAllSubmatch(readme, -1)
	if len(rows) < 20 {
		t.Fatalf("found %d settings in the README's table; the pattern is stale", len(rows))
	}
	for _, m := range rows {
		if k := string(m[1]); !listed[k] && !set[k] {
			t.Errorf("the README's setting %s is not in the ConfigMap (set it, or list its default as a comment)", k)
		}
		if !read[string(m[1])] {
			t.Errorf("the README's setting %s is not read by the binary", m[1])
		}
	}
}
