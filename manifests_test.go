package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// queries returns every PromQL expression of the dashboard and the alert
// rules, each with where it comes from.
func queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	raw, err := os.ReadFile("manifests/base/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			out[q.Expr] = "dashboard panel " + p.Title
		}
	}
	rules, err := os.ReadFile("manifests/base/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Each rule's expr is a block scalar: "expr: |" then indented lines.
	for _, m := range regexp.MustCompile(`(?m)^( +)- alert: (\S+)\n(?:.*\n)*?\s+expr: \|\n((?:\s{12,}.*\n)+)`).FindAllSubmatch(rules, -1) {
		out[strings.TrimSpace(string(m[3]))] = "alert " + string(m[2])
	}
	if len(out) < 20 {
		t.Fatalf("found only %d queries; the patterns are stale", len(out))
	}
	return out
}

// metricNames returns the metric names a PromQL expression selects: what
// is left once strings, label matchers, grouping clauses, ranges, numbers,
// function calls and keywords are taken out.
func metricNames(expr string) []string {
	e := regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`)
	e = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(e, " ")
	e = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(e, " ")
	e = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(e, " ")
	e = regexp.MustCompile(`\boffset\s+\w+`).ReplaceAllString(e, " ")
	var names []string
	for _, m := range regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?`).FindAllStringSubmatch(e, -1) {
		if m[2] != "" { // a function or aggregation
			continue
		}
		switch m[1] {
		case "and", "or", "unless", "bool", "e": // e: of 1e-9
			continue
		}
		names = append(names, m[1])
	}
	return names
}

// TestQueriesParseAndNameExportedMetrics: every PromQL expression in the
// dashboard and the rules parses (promtool, as recording rules), and each
// metric it names is one the service exports (a running instance in
// cluster of two with Redis, after samples), or one Kubernetes exports
// (kube-state-metrics, cAdvisor, the kubelet).
func TestQueriesParseAndNameExportedMetrics(t *testing.T) {
	qs := queries(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: queries\n    rules:\n")
	i := 0
	for _, q := range slices.Sorted(func(yield func(string) bool) {
		for q := range qs {
			if !yield(q) {
				return
			}
		}
	}) {
		i++
		js, _ := json.Marshal(q) // a JSON string is a YAML string
		b.WriteString("      - record: q" + string(rune('a'+i%26)) + "_" + strings.Repeat("x", i) + "\n        expr: " + string(js) + "\n")
	}
	file := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool not found: apt-get install -y prometheus (make test installs it)")
	}
	if out, err := exec.Command("promtool", "check", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboard's and the alerts' queries: %v\n%s", err, out)
	}

	// Two members with Redis, and a batch over both: every family the
	// service has exists (per-peer series appear with the first forward).
	bin := buildService(t)
	a, b2 := freeAddr(t), freeAddr(t)
	redis := "REDIS_ADDR=" + startRedis(t)
	s := startServiceAt(t, bin, a, redis, "SNAPSHOT_INTERVAL=100ms", "PEERS="+a+","+b2, "SELF_ADDR="+a)
	startServiceAt(t, bin, b2, redis, "SNAPSHOT_INTERVAL=100ms", "PEERS="+a+","+b2, "SELF_ADDR="+b2)
	s.post(t, fleetBatch(20, 1))
	page := s.get(t, "/metrics")
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]`).FindAllStringSubmatch(page, -1) {
		exported[m[1]] = true
	}
	k8s := regexp.MustCompile(`^(kube_|container_|kubelet_|node_)`)
	for q, from := range qs {
		for _, name := range metricNames(q) {
			if !exported[name] && !k8s.MatchString(name) {
				t.Errorf("%s names %q, which the service does not export (nor Kubernetes): %s", from, name, q)
			}
		}
	}
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`sum by (endpoint) (rate(requests_total{job="a",status=~"5.."}[1m]))`, []string{"requests_total"}},
		{`max(cluster_members) != sum(kube_deployment_status_replicas_ready{deployment="x"})`, []string{"cluster_members", "kube_deployment_status_replicas_ready"}},
		{`sum(rate(a_total[5m])) > 3 * sum(rate(a_total[1h] offset 5m)) and sum(rate(a_total[5m])) > 1e-9`, []string{"a_total", "a_total", "a_total"}},
		{`histogram_quantile(0.95, sum by (le) (rate(x_bucket{endpoint=~"/a|/b"}[5m]))) > 0.5`, []string{"x_bucket"}},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q; want %q", tc.expr, got, tc.want)
		}
	}
}

// TestPrometheusEndToEnd: a real Prometheus scrapes a cluster of two with
// Redis on loopback, with the ServiceMonitor's path and interval, loads
// the alert rules (each must evaluate without error), and the dashboard's
// main queries return data while samples flow.
func TestPrometheusEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		t.Fatal("prometheus not found: apt-get install -y prometheus (make test installs it)")
	}
	sm, err := os.ReadFile("manifests/base/servicemonitor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := regexp.MustCompile(`(?m)^\s+path: (\S+)$`).FindSubmatch(sm)
	interval := regexp.MustCompile(`(?m)^\s+interval: (\S+)$`).FindSubmatch(sm)
	if path == nil || interval == nil {
		t.Fatal("no path or interval in the ServiceMonitor")
	}
	every, err := time.ParseDuration(string(interval[1]))
	if err != nil {
		t.Fatal(err)
	}

	bin := buildService(t)
	a, b2 := freeAddr(t), freeAddr(t)
	redis := "REDIS_ADDR=" + startRedis(t)
	pa := startServiceAt(t, bin, a, redis, "SNAPSHOT_INTERVAL=200ms", "PEERS="+a+","+b2, "SELF_ADDR="+a)
	startServiceAt(t, bin, b2, redis, "SNAPSHOT_INTERVAL=200ms", "PEERS="+a+","+b2, "SELF_ADDR="+b2)
	defer feed(pa, 40)() // traffic for the whole test: rates need it

	dir := t.TempDir()
	rules := regexp.MustCompile(`(?s)^.*?\nspec:\n`).ReplaceAllString(string(mustRead(t, "manifests/base/prometheusrule.yaml")), "")
	rules = regexp.MustCompile(`(?m)^  `).ReplaceAllString(rules, "")
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: %s
  evaluation_interval: %s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: ai-load-service
    metrics_path: %s
    static_configs:
      - targets: [%q]
        labels: {pod: a}
      - targets: [%q]
        labels: {pod: b}
`, every, every, path[1], a, b2)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	prom := exec.Command("prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web)
	var logs bytes.Buffer
	prom.Stdout, prom.Stderr = &logs, &logs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { prom.Process.Kill(); prom.Wait() }() //nolint:errcheck
	api := func(q string) (status string, n int, errText string) {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return "", 0, err.Error()
		}
		defer resp.Body.Close()
		var r struct {
			Status, Error string
			Data          struct{ Result []json.RawMessage }
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return "", 0, err.Error()
		}
		return r.Status, len(r.Data.Result), r.Error
	}
	// Two scrapes of each target, so rates have two points.
	deadline := time.Now().Add(every*3 + 20*time.Second)
	for {
		if _, n, _ := api(`count_over_time(up{job="ai-load-service"}[5m]) >= 2`); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			prom.Process.Kill() //nolint:errcheck
			prom.Wait()         //nolint:errcheck // the log is read once it is done writing
			t.Fatalf("Prometheus did not scrape both pods twice:\n%s", logs.String())
		}
		time.Sleep(time.Second)
	}
	if _, n, _ := api(`up{job="ai-load-service"} == 1`); n != 2 {
		t.Fatalf("not both targets up")
	}
	// The rules loaded, and each evaluated without error.
	resp, err := http.Get("http://" + web + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	var rs struct {
		Data struct {
			Groups []struct {
				Rules []struct{ Name, Health, LastError string }
			}
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&rs)
	resp.Body.Close()
	nrules := 0
	for _, g := range rs.Data.Groups {
		for _, r := range g.Rules {
			nrules++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q, %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	if err != nil || nrules < 8 {
		t.Fatalf("%d rules loaded (%v)", nrules, err)
	}
	// The dashboard's queries: every one runs; the main ones return data.
	main := []string{"Requests per second by route", "Latency of ingest (p50, p95, p99)", "Samples ingested per second, by pod",
		"Rolling average by metric", "Active devices and streams", "Shard queue depth (deepest per pod)",
		"Snapshots written and failing per second", "Forwarded requests per second, by result", "Cluster members seen by each pod"}
	for q, from := range queries(t) {
		if !strings.HasPrefix(from, "dashboard panel ") {
			continue
		}
		status, n, e := api(q)
		if status != "success" {
			t.Errorf("%s: %s: %s %s", from, q, status, e)
			continue
		}
		if slices.Contains(main, strings.TrimPrefix(from, "dashboard panel ")) && n == 0 && !regexp.MustCompile(`kube_|container_|status=~`).MatchString(q) {
			t.Errorf("%s returns no data: %s", from, q)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// feed posts a batch of devices samples to s every 100 ms until the func it
// returns is called (it waits for the last post).
func feed(s *service, devices int) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for round := 0; ; round++ {
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			resp, err := http.Post(s.base+"/api/v1/ingest", "application/json", strings.NewReader(fleetBatch(devices, round%30)))
			if err == nil {
				resp.Body.Close()
			}
		}
	}()
	return func() { close(quit); <-done }
}
