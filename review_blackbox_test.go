package main

// Regression tests from a hostile review of the built binary, black-box: each comment tells
// the defect as it was found; the test checks that it stays fixed.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReviewInfiniteZLosesDeviceOnRestart: MIN_STDDEV accepted any
// positive number down to 4.9e-324. With MIN_STDDEV=1e-300 a flat window
// and then a valid value gave z = +Inf: the alert said "z": null, and the
// snapshot written at SIGTERM held LastZ = +Inf, which the decoder refused
// as corrupt: after a restart the device was gone. MIN_STDDEV below 1e-150
// now exits 2; at 1e-150, the largest jump valid values allow keeps z
// finite and the device survives a restart.
func TestReviewInfiniteZLosesDeviceOnRestart(t *testing.T) {
	bin := buildService(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MIN_STDDEV=1e-300")
	msg, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !bytes.Contains(msg, []byte("MIN_STDDEV")) {
		t.Fatalf("MIN_STDDEV=1e-300: %v %s; want exit 2 naming MIN_STDDEV", err, msg)
	}
	addr := startRedis(t)
	env := []string{"REDIS_ADDR=" + addr, "SNAPSHOT_INTERVAL=1h", "DETECTOR=zscore", "MIN_STDDEV=1e-150", "ALERT_COOLDOWN=0"}
	s := startService(t, bin, env...)
	var b strings.Builder
	b.WriteString("[")
	for i := range 10 {
		fmt.Fprintf(&b, `{"device":"flat","ts":%d,"metrics":{"x":-1e150}},`, i+1)
	}
	b.WriteString(`{"device":"flat","ts":11,"metrics":{"x":1e150}}]`)
	body := s.post(t, b.String())
	var out struct {
		Anomalies []struct {
			Value, Mean, Stddev float64
			Z                   *float64
		}
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out.Anomalies) != 1 {
		t.Fatalf("want one alert: %s (%v)", body, err)
	}
	if a := out.Anomalies[0]; a.Z == nil {
		t.Errorf("alert has z null with value %g, mean %g, stddev %g: %s", a.Value, a.Mean, a.Stddev, body)
	}
	s.stop(t, syscall.SIGTERM)
	again := startService(t, bin, env...)
	if got := again.get(t, "/api/v1/devices/flat"); !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"count":11`) {
		m := again.get(t, "/metrics")
		corrupt := ""
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "restore_corrupt_total ") {
				corrupt = l
			}
		}
		t.Fatalf("device answered 200 before SIGTERM; after a restart: %s (%s)\nlog:\n%s", got, corrupt, again.logs)
	}
}

// TestReviewPprofCmdlineShowsRedisPassword: README: "REDIS_PASSWORD ...
// never printed". -redis-password is a documented way to give it, and with
// PPROF=true /debug/pprof/cmdline serves the command line verbatim.
// Review D: the first fix refused GET /debug/pprof/cmdline by the router's
// catch-all value, which comes from the path as sent, while pprofhandler
// dispatches on fasthttp's normalised path, so GET /debug/pprof//cmdline
// (curl --path-as-is, any raw client) was still served it.
func TestReviewPprofCmdlineShowsRedisPassword(t *testing.T) {
	bin := buildService(t)
	const secret = "hunter2-review-secret"
	addr := freeAddr(t)
	s := startServiceArgs(t, bin, addr, []string{"-redis-password", secret}, "PPROF=true")
	for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof//cmdline"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !bytes.HasPrefix(got, []byte("HTTP/1.1 ")) {
			t.Fatalf("GET %s: %v %q\n%s", path, err, got, s.logs)
		}
		if bytes.Contains(got, []byte(secret)) {
			t.Errorf("GET %s prints the Redis password: %q", path, bytes.ReplaceAll(got, []byte{0}, []byte{' '}))
		}
	}
}

// TestReviewMalformedIPv4AddrExits2: README: ADDR is "checked at start,
// offline"; an invalid value exits 2 naming it. A malformed dotted quad
// such as 999.999.999.999 is neither an IP nor a host name (a top-level
// label cannot be all-numeric), but hostName accepts it as a DNS name: the
// process starts its shards, sends a DNS query from net.Listen, and exits
// 1 with "lookup 999.999.999.999: no such host".
func TestReviewMalformedIPv4AddrExits2(t *testing.T) {
	bin := buildService(t)
	for _, addr := range []string{"999.999.999.999:8080", "256.0.0.1:8080"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = append(os.Environ(), "ADDR="+addr)
		out, err := cmd.CombinedOutput()
		cancel()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("ADDR=%s: exit %v; want status 2 from the offline check\n%s", addr, err, out)
		}
	}
}

// TestReviewPipelinedRequestHangsBinary: the built binary with
// READ_TIMEOUT=200ms and IDLE_TIMEOUT=500ms. A client pipelines one whole
// ingest request and the header plus part of the body of a second, then
// stalls. Neither bound ever fires: after 3 s the connection is still
// open and the first request, applied, has had no response.
func TestReviewPipelinedRequestHangsBinary(t *testing.T) {
	bin := buildService(t)
	s := startService(t, bin, "READ_TIMEOUT=200ms", "IDLE_TIMEOUT=500ms")
	c, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	good := `{"device":"pipe-1","metrics":{"t":1}}`
	req := func(body string, n int) string {
		return fmt.Sprintf("POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", n, body)
	}
	if _, err := io.WriteString(c, req(good, len(good))+req(`{"device":"pipe-2"`, 40)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(3 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		dev := s.get(t, "/api/v1/devices/pipe-1")
		m := s.get(t, "/metrics")
		open := ""
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "http_open_connections ") || strings.HasPrefix(l, "http_connection_timeouts_total{") {
				open += l + "; "
			}
		}
		t.Fatalf("connection still open after %v with READ_TIMEOUT=200ms IDLE_TIMEOUT=500ms; received %q; device pipe-1: %.60s...; %s",
			time.Since(start).Round(time.Millisecond), got, dev, open)
	}
}

// TestReviewSecondSignalLosesAcknowledgedSamples: run() calls
// signal.Stop after the first SIGTERM/SIGINT, so a second one (Ctrl-C
// pressed twice, a supervisor repeating SIGTERM) during DRAIN_DELAY or
// STOP_TIMEOUT kills the process by the default action: no seal, no final
// snapshot. With SNAPSHOT_INTERVAL=1h every sample answered 200 is lost,
// though README's Lifecycle promises the last snapshot on SIGTERM or SIGINT
// (and only SIGKILL loses up to SNAPSHOT_INTERVAL of updates).
func TestReviewSecondSignalLosesAcknowledgedSamples(t *testing.T) {
	bin := buildService(t)
	addr := startRedis(t)
	env := []string{"REDIS_ADDR=" + addr, "SNAPSHOT_INTERVAL=1h", "DRAIN_DELAY=2s"}
	s := startService(t, bin, env...)
	s.post(t, `{"device":"twice","metrics":{"t":1}}`)
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // /ready is 503: the stop has begun
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := s.cmd.Wait()
	again := startService(t, bin, env...)
	if got := again.get(t, "/api/v1/devices/twice"); !strings.HasPrefix(got, "200 ") {
		t.Fatalf("a sample answered 200 is gone after a second SIGINT during the stop (exit: %v): %s\nlog:\n%s", err, got, s.logs)
	}
}
