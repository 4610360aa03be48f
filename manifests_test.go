package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
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
