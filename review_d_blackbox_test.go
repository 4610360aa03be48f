package main

// Failing tests from hostile review D, against the built binary. Each
// test's comment states the defect and the claim it contradicts.

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestReviewDPprofCmdlinePathVariantShowsRedisPassword: README:
// REDIS_PASSWORD is "never printed"; the fix for the first review refuses
// GET /debug/pprof/cmdline (server.go:141-148) by looking at the router's
// catch-all value, which comes from the path as sent. pprofhandler then
// dispatches on ctx.Path(), fasthttp's normalised path, so
// GET /debug/pprof//cmdline (curl --path-as-is, any raw client) is served
// the command line with the password given as -redis-password.
func TestReviewDPprofCmdlinePathVariantShowsRedisPassword(t *testing.T) {
	bin := buildService(t)
	const secret = "hunter2-review-d-secret"
	addr := freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-addr", addr, "-redis-password", secret)
	cmd.Env = append(os.Environ(), "PPROF=true")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	var got []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /debug/pprof//cmdline HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		got, _ = io.ReadAll(c)
		c.Close()
		break
	}
	if got == nil {
		t.Fatalf("service never answered:\n%s", logs.String())
	}
	if bytes.Contains(got, []byte(secret)) {
		t.Fatalf("GET /debug/pprof//cmdline prints the Redis password: %q", bytes.ReplaceAll(got, []byte{0}, []byte{' '}))
	}
}
