package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"
)

const (
	tokA = "token-a-0123456789abcdef"
	tokB = "token-b-0123456789abcdef"
	tokM = "metrics-0123456789abcdef"
	tokC = "cluster-0123456789abcdef"
)

// call sends a request with headers and returns the status, the
// WWW-Authenticate header and the body.
func call(t *testing.T, url, method, path, body string, hdr map[string]string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(b)
}

func bearerHdr(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok}
}

func mustCredentials(t *testing.T, o CredentialOptions) *Credentials {
	t.Helper()
	c, err := NewCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// TestIngestTokens: with INGEST_TOKENS, the ingest, /metric, read and
// cluster routes answer 401 with a JSON error and WWW-Authenticate unless
// the request bears one of the tokens, and store nothing; /health and
// /ready stay open, /metrics too without METRICS_TOKEN. Failures are
// counted by route, and the tokens appear in no metric.
func TestIngestTokens(t *testing.T) {
	creds := mustCredentials(t, CredentialOptions{IngestTokens: tokA + "," + tokB})
	ln, h := serveAPI(t, "127.0.0.1:0", Options{Credentials: creds}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	body := sample("d-auth", 1000, `"temp":1`)
	for _, c := range []struct {
		method, path, body string
	}{
		{"POST", "/api/v1/ingest", body},
		{"POST", "/metric", `{"rps":1,"device_id":"d-auth"}`},
		{"GET", "/api/v1/devices/d-auth", ""},
		{"GET", "/api/v1/devices/d-auth/anomalies", ""},
		{"GET", "/analyze", ""},
		{"GET", "/api/v1/cluster", ""},
	} {
		for name, hdr := range map[string]map[string]string{
			"none":       nil,
			"wrong":      bearerHdr(tokA + "x"),
			"prefix":     bearerHdr(tokA[:len(tokA)-1]),
			"basic":      {"Authorization": "Basic " + tokA},
			"empty":      {"Authorization": "Bearer "},
			"other case": bearerHdr(strings.ToUpper(tokA)),
		} {
			code, www, b := call(t, url, c.method, c.path, c.body, hdr)
			var m map[string]any
			if code != 401 || !strings.HasPrefix(www, "Bearer") || json.Unmarshal([]byte(b), &m) != nil || !strings.Contains(m["error"].(string), "INGEST_TOKENS") {
				t.Fatalf("%s %s with %s credential: %d %q %s; want 401, WWW-Authenticate: Bearer, a JSON error naming INGEST_TOKENS", c.method, c.path, name, code, www, b)
			}
		}
	}
	if code, _, b := call(t, url, "GET", "/api/v1/devices/d-auth", "", bearerHdr(tokB)); code != 404 {
		t.Fatalf("a refused request stored something: %d %s", code, b)
	}
	for _, tok := range []string{tokA, tokB} {
		if code, _, b := call(t, url, "POST", "/api/v1/ingest", body, map[string]string{"Authorization": "bearer " + tok}); code != 200 {
			t.Fatalf("ingest with token: %d %s", code, b)
		}
	}
	for _, p := range []string{"/health", "/ready", "/metrics", "/"} {
		if code, _, b := call(t, url, "GET", p, "", nil); code != 200 {
			t.Fatalf("GET %s without a token: %d %s", p, code, b)
		}
	}
	_, _, m := call(t, url, "GET", "/metrics", "", nil)
	for _, want := range []string{`auth_failures_total{route="/api/v1/ingest"} 6`, `auth_failures_total{route="/metric"} 6`, `rejections_total{reason="unauthorized"} 36`} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(m, tokA[:8]) || strings.Contains(m, tokB[:8]) {
		t.Error("/metrics shows a token")
	}
	_ = h
}

// TestMetricsToken: METRICS_TOKEN guards /metrics alone.
func TestMetricsToken(t *testing.T) {
	creds := mustCredentials(t, CredentialOptions{MetricsToken: tokM})
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{Credentials: creds}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	if code, www, b := call(t, url, "GET", "/metrics", "", nil); code != 401 || www == "" || !strings.Contains(b, "METRICS_TOKEN") {
		t.Fatalf("/metrics without the token: %d %q %s", code, www, b)
	}
	if code, _, _ := call(t, url, "GET", "/metrics", "", bearerHdr(tokM)); code != 200 {
		t.Fatalf("/metrics with the token: %d", code)
	}
	if code, _, b := call(t, url, "POST", "/api/v1/ingest", sample("d", 1, `"t":1`), nil); code != 200 {
		t.Fatalf("ingest without INGEST_TOKENS needs no token: %d %s", code, b)
	}
}

// TestClusterTokenMarked: with CLUSTER_TOKEN, a request marked as a
// member's (X-Aiload-Forwarded) needs it, even where no ingest token is
// set; a client's ingest token does not pass for it; the handoff routes
// need it too. /metric ignores a client's marker, so it is not held to it.
func TestClusterTokenMarked(t *testing.T) {
	creds := mustCredentials(t, CredentialOptions{IngestTokens: tokA, ClusterToken: tokC})
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{Credentials: creds}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	marked := func(tok string) map[string]string {
		return map[string]string{hdrForwarded: "127.0.0.1:1", "Authorization": "Bearer " + tok}
	}
	for _, p := range []string{handoffPath, claimPath, "/api/v1/ingest"} {
		for _, tok := range []string{tokA, "", tokC + "x"} {
			if code, _, b := call(t, url, "POST", p, "x", marked(tok)); code != 401 || !strings.Contains(b, "CLUSTER_TOKEN") {
				t.Fatalf("POST %s marked, bearing %q: %d %s; want 401 naming CLUSTER_TOKEN", p, tok, code, b)
			}
		}
	}
	if code, _, b := call(t, url, "POST", "/api/v1/ingest", sample("d", 1, `"t":1`), marked(tokC)); code == 401 {
		t.Fatalf("marked ingest with CLUSTER_TOKEN refused: %s", b)
	}
	if code, _, b := call(t, url, "POST", "/metric", `{"rps":1}`, marked(tokA)); code != 200 {
		t.Fatalf("/metric with a client's marker and an ingest token: %d %s", code, b)
	}
}

// TestIngestTokensFile: the file's tokens are re-read when it changes (a
// rotated Kubernetes Secret); an emptied or unreadable file keeps the
// tokens in force; bad files are refused at start with errors that do not
// quote the tokens.
func TestIngestTokensFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tokens")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(f+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
	write("# devices\n" + tokA + "\n\n")
	creds := mustCredentials(t, CredentialOptions{IngestTokensFile: f, Reload: 10 * time.Millisecond})
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{Credentials: creds}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	ok := func(tok string) bool {
		code, _, _ := call(t, url, "POST", "/api/v1/ingest", sample("d", 1, `"t":1`), bearerHdr(tok))
		return code == 200
	}
	wait := func(cond func() bool, what string) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal(what)
			}
		}
	}
	if !ok(tokA) || ok(tokB) {
		t.Fatal("the file's token is not the one in force")
	}
	write(tokB + "\n")
	wait(func() bool { return ok(tokB) && !ok(tokA) }, "the rotated token did not replace the old one")
	write("")
	time.Sleep(100 * time.Millisecond)
	if !ok(tokB) {
		t.Fatal("an emptied file locked the devices out")
	}
	os.Remove(f)
	time.Sleep(100 * time.Millisecond)
	if !ok(tokB) {
		t.Fatal("a removed file locked the devices out")
	}
	write(tokA + "\n" + tokB + "\n")
	wait(func() bool { return ok(tokA) && ok(tokB) }, "two tokens not both in force")

	for name, content := range map[string]string{"empty": "\n# none\n", "short": "abc\n", "space": "token with a space inside\n"} {
		bad := filepath.Join(dir, name)
		os.WriteFile(bad, []byte(content), 0o600) //nolint:errcheck
		if _, err := NewCredentials(CredentialOptions{IngestTokensFile: bad}); err == nil || strings.Contains(err.Error(), "abc") || strings.Contains(err.Error(), "with a space") {
			t.Errorf("%s file: %v; want an error that quotes no token", name, err)
		}
	}
	if _, err := NewCredentials(CredentialOptions{IngestTokensFile: filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing file was accepted")
	}
	if _, err := NewCredentials(CredentialOptions{IngestTokens: tokA, IngestTokensFile: f}); err == nil {
		t.Error("both INGEST_TOKENS and INGEST_TOKENS_FILE were accepted")
	}
	if _, err := NewCredentials(CredentialOptions{ClusterToken: "short"}); err == nil || strings.Contains(err.Error(), "short") {
		t.Errorf("a short CLUSTER_TOKEN: %v", err)
	}
}

// TestMaxBatch: a request of more samples than MAX_BATCH gets 413 with a
// JSON error naming the setting, stores nothing, and is counted.
func TestMaxBatch(t *testing.T) {
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{MaxBatch: 3, MaxBodyBytes: 1 << 20}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	batch := func(n int) string {
		var b []string
		for i := range n {
			b = append(b, sample(fmt.Sprintf("mb-%d", i), 1, `"t":1`))
		}
		return "[" + strings.Join(b, ",") + "]"
	}
	if code, _, b := call(t, url, "POST", "/api/v1/ingest", batch(3), nil); code != 200 {
		t.Fatalf("3 samples: %d %s", code, b)
	}
	code, _, b := call(t, url, "POST", "/api/v1/ingest", batch(4), nil)
	if code != 413 || !strings.Contains(b, "MAX_BATCH") || !strings.HasPrefix(b, `{"error":`) {
		t.Fatalf("4 samples: %d %s; want 413 naming MAX_BATCH", code, b)
	}
	if code, _, _ := call(t, url, "GET", "/api/v1/devices/mb-3", "", nil); code != 404 {
		t.Fatal("a refused batch stored its last sample")
	}
	_, _, m := call(t, url, "GET", "/metrics", "", nil)
	for _, want := range []string{`rejections_total{reason="batch_too_large"} 1`, `requests_total{route="/api/v1/ingest",method="POST",status="413"} 1`} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMaxConnsPerIP: beyond MAX_CONNS_PER_IP open connections from one
// address, a new one gets a 429 with a JSON error naming the setting and
// is closed; the others keep working, and a closed one frees its place.
func TestMaxConnsPerIP(t *testing.T) {
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{MaxConnsPerIP: 2}, shard.Options{}, nil)
	addr := ln.Addr().String()
	get := func(c net.Conn) (string, string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
		if _, err := fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.Status, string(b)
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := dial(), dial()
	get(a)
	get(b)
	st, body := get(dial())
	if !strings.HasPrefix(st, "429") || !strings.Contains(body, "MAX_CONNS_PER_IP") {
		t.Fatalf("third connection: %s %s; want 429 naming MAX_CONNS_PER_IP", st, body)
	}
	if st, _ := get(a); !strings.HasPrefix(st, "200") {
		t.Fatalf("a connection within the limit: %s", st)
	}
	b.Close()
	time.Sleep(50 * time.Millisecond)
	d := dial()
	if st, _ := get(d); !strings.HasPrefix(st, "200") {
		t.Fatalf("after one closed: %s", st)
	}
	c := dial()
	c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	m, _ := io.ReadAll(c)                          // refused at once, before any request
	if !strings.Contains(string(m), "429") {
		t.Fatalf("a refused connection read %q", m)
	}
	a.Close()
	d.Close()
	time.Sleep(50 * time.Millisecond)
	_, _, metrics := call(t, "http://"+addr, "GET", "/metrics", "", nil)
	if !strings.Contains(metrics, `rejections_total{reason="conns_per_ip"} 2`+"\n") {
		t.Errorf("/metrics does not count the refusals:\n%s", grepLines(metrics, "rejections"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
