package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"ai-load-service/shard"
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
		return c.Addr == ":8080" && c.WindowSize == 50 && c.MinSamples == 10 && c.ZThreshold == 4 &&
			c.MinStddev == 1e-9 && c.MaxBodyBytes == 1<<20 && c.LogLevel == "info" && c.Shards > 0
	})
	f(map[string]string{"WINDOW_SIZE": "20", "Z_THRESHOLD": "2.5", "SHARDS": "3", "LOG_LEVEL": "debug", "DRAIN_DELAY": "2s"}, nil, "",
		func(c config) bool {
			return c.WindowSize == 20 && c.ZThreshold == 2.5 && c.Shards == 3 && c.LogLevel == "debug" && c.DrainDelay == 2*time.Second
		})
	f(map[string]string{"WINDOW_SIZE": "20"}, []string{"-window-size", "30"}, "", func(c config) bool { return c.WindowSize == 30 })
	f(map[string]string{"ADDR": "127.0.0.1:9"}, nil, "", func(c config) bool { return c.Addr == "127.0.0.1:9" })
	f(map[string]string{"PPROF": "true"}, nil, "", func(c config) bool { return c.Pprof })
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
	} {
		f(map[string]string{env: val}, nil, "invalid "+env+"=", nil)
	}
	f(map[string]string{"Z_THRESHOLD": "NaN"}, nil, "invalid Z_THRESHOLD", nil)
	f(nil, []string{"-shards", "0"}, "-shards", nil)
	f(map[string]string{"MIN_SAMPLES": "60"}, nil, "MIN_SAMPLES=60 exceeds WINDOW_SIZE=50", nil)
	f(nil, []string{"extra"}, "unexpected argument", nil)
	f(nil, nil, "", func(c config) bool {
		return c.Detector == "winsor" && c.Cooldown == 50 && c.StepFloor == 0.5 && c.shardOptions().Validate() == nil
	})
	f(map[string]string{"DETECTOR": "ewma", "ALERT_COOLDOWN": "0", "STEP_FLOOR": "0"}, nil, "", func(c config) bool {
		o := c.shardOptions()
		return o.Detector == shard.EWMA && o.Cooldown < 0 && o.StepFloor < 0
	})
	f(map[string]string{"STEP_FLOOR": "-1"}, nil, "invalid STEP_FLOOR=", nil)
	f(map[string]string{"DETECTOR": "median"}, nil, "invalid DETECTOR=", nil)
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
		return len(c.Rules) == 2 && c.Rules[0].Params.Kind == shard.EWMA && c.Rules[0].Params.Window == 100 &&
			c.Rules[1].Params.Threshold == 4 && c.Rules[1].Params.Window == 50
	})
	bad := write("bad.json", `{"rules":[{"match":"temp*"},{"match":"hum","window":1}]}`)
	f(map[string]string{"DETECTOR_CONFIG": bad}, nil, `rule 2 (match "hum"): window=1`, nil)
	f(map[string]string{"DETECTOR_CONFIG": filepath.Join(dir, "missing.json")}, nil, "cannot read DETECTOR_CONFIG", nil)
}

// buildService compiles the service once per test binary run.
func buildService(t *testing.T) string {
	t.Helper()
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
	cmd.Env = append(os.Environ(), "DRAIN_DELAY=700ms", "LOG_LEVEL=info")
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
	t.Log(fmt.Sprintf("exit %v after SIGTERM", took))
}
