package main

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestReviewKAddrServiceNamePort: ADDR's help says its port may be "a
// number or a service name", and SELF_ADDR may be the pod IP alone, its
// port then "PEER_PORT or ADDR's". With ADDR=:http-alt (8080/tcp in
// /etc/services) the completion copies the name verbatim
// (main.go:184-188, and main.go:177-179 for PEER_PORT), and membership's
// parseAddr / the DNS port check demand a number: the process refuses to
// start with a configuration its own help documents as valid.
func TestReviewKAddrServiceNamePort(t *testing.T) {
	for _, env := range []map[string]string{
		{"ADDR": ":http-alt", "SELF_ADDR": "10.0.0.5", "PEERS": "10.0.0.5:8080"},
		{"ADDR": ":http-alt", "SELF_ADDR": "10.0.0.5", "PEERS_DNS": "ai-load-service-peers"},
	} {
		c, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Errorf("env %v: parseConfig: %v", env, err)
			continue
		}
		if c.SelfAddr != "10.0.0.5:8080" {
			t.Errorf("env %v: SELF_ADDR completed to %q; want 10.0.0.5:8080", env, c.SelfAddr)
		}
		if _, err := c.membership(zerolog.Nop(), nil, nil); err != nil {
			t.Errorf("env %v: %v", env, err)
		}
	}
}

// promtoolCase runs one promtool unit test against the PrometheusRule's
// spec, cut out as .ci/manifests does, and fails with promtool's output.
func promtoolCase(t *testing.T, tests string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool not installed")
	}
	rule := string(mustRead(t, "manifests/base/prometheusrule.yaml"))
	spec := rule[strings.Index(rule, "\nspec:\n")+len("\nspec:\n"):]
	var b strings.Builder
	for _, l := range strings.SplitAfter(spec, "\n") {
		b.WriteString(strings.TrimPrefix(l, "  "))
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(`rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
`+tests), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("promtool", "test", "rules", "t.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestReviewKMembersDisagreeStaleView: AiLoadServiceMembersDisagree
// (prometheusrule.yaml:74) compares max by (namespace) (cluster_members)
// with the ready replicas. A pod whose view is stale and smaller (its DNS
// refresh fails: the runbook's cluster_refresh_errors_total) is hidden by
// max as long as one other pod sees the right count: 3 ready, pods see
// 3, 3, 2 for 20 minutes, and the alert whose summary is "Pods see a
// different number of cluster members than ready replicas" stays silent.
func TestReviewKMembersDisagreeStaleView(t *testing.T) {
	promtoolCase(t, `  - name: MembersDisagree must fire when one pod has a stale view
    interval: 1m
    input_series:
      - series: 'cluster_members{job="ai-load-service",namespace="prod",pod="p1",endpoint="http",service="ai-load-service",container="ai-load-service",instance="10.0.0.1:8080"}'
        values: '3x30'
      - series: 'cluster_members{job="ai-load-service",namespace="prod",pod="p2",endpoint="http",service="ai-load-service",container="ai-load-service",instance="10.0.0.2:8080"}'
        values: '3x30'
      - series: 'cluster_members{job="ai-load-service",namespace="prod",pod="p3",endpoint="http",service="ai-load-service",container="ai-load-service",instance="10.0.0.3:8080"}'
        values: '2x30'
      - series: 'kube_deployment_status_replicas_ready{job="kube-state-metrics",namespace="prod",deployment="ai-load-service",instance="10.0.9.9:8080",pod="ksm-0",service="kube-state-metrics",endpoint="http",container="kube-state-metrics"}'
        values: '3x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: AiLoadServiceMembersDisagree
        exp_alerts:
          - exp_labels: {severity: warning, namespace: prod}
            exp_annotations:
              summary: Pods see a different number of cluster members than ready replicas.
              runbook: Check the headless Service ai-load-service-peers (its endpoints and publishNotReadyAddresses) and cluster_refresh_errors_total; pods that disagree forward misdirected requests (421) and clients see 503s.
`)
}

// TestReviewKErrorRateProbes: requests_total counts every route, the
// kubelet's /ready probes included (server/health.go:40-50 answers 503
// while a pod is not in its view, starting or draining). In an idle
// namespace with one pod stuck not ready, the only 5xx are probe answers,
// and AiLoadServiceErrorRate (prometheusrule.yaml:17, no route filter)
// fires "More than 1% of requests fail with 5xx" (about 45%) although no
// client request failed.
func TestReviewKErrorRateProbes(t *testing.T) {
	promtoolCase(t, `  - name: ErrorRate must not fire on kubelet readiness probes alone
    interval: 1m
    input_series:
      # idle staging: no client traffic; p2 is not ready (503 on /ready every 2 s)
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p1",route="/ready",method="GET",status="200"}'
        values: '0+30x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p2",route="/ready",method="GET",status="503"}'
        values: '0+30x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p1",route="/health",method="GET",status="200"}'
        values: '0+6x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p2",route="/health",method="GET",status="200"}'
        values: '0+6x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p1",route="/metrics",method="GET",status="200"}'
        values: '0+4x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p2",route="/metrics",method="GET",status="200"}'
        values: '0+4x30'
      - series: 'requests_total{job="ai-load-service",namespace="staging",pod="p1",route="/api/v1/ingest",method="POST",status="200"}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: AiLoadServiceErrorRate
`)
}

// TestReviewKSelfAddrZone: SELF_ADDR may be "its IP alone", and
// membership's parseAddr accepts a zoned IPv6 ([fe80::1%eth0]:8080, via
// netip). But the completion tests the bare form with net.ParseIP
// (main.go:181), which rejects zones, so "fe80::1%eth0" (or bracketed)
// gets no port and the process exits "too many colons" / "missing port".
func TestReviewKSelfAddrZone(t *testing.T) {
	for _, self := range []string{"fe80::1%eth0", "[fe80::1%eth0]"} {
		env := map[string]string{"ADDR": ":8080", "SELF_ADDR": self, "PEERS": "[fe80::1%eth0]:8080"}
		c, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Errorf("SELF_ADDR=%q: parseConfig: %v", self, err)
			continue
		}
		if c.SelfAddr != "[fe80::1%eth0]:8080" {
			t.Errorf("SELF_ADDR=%q completed to %q; want [fe80::1%%eth0]:8080", self, c.SelfAddr)
		}
		if _, err := c.membership(zerolog.Nop(), nil, nil); err != nil {
			t.Errorf("SELF_ADDR=%q: %v", self, err)
		}
	}
}

// TestReviewKCIManifestsMissesUnbuildableImage: .ci/manifests says it
// checks "the binary built by the Dockerfile's own command line". It runs
// the RUN line with /out/ replaced, then checks $work/ai-load-service with
// `if ldd ...` and `-h ... || true` (.ci/manifests:21-26): when that file
// does not exist, both pass. Nor does anything compare the RUN line's
// output with the final stage's COPY --from=build. A Dockerfile whose image
// cannot be built (COPY of a file the build never writes) passes CI.
// Run on a copy of the tree (git archive HEAD) under a temporary dir.
func TestReviewKCIManifestsMissesUnbuildableImage(t *testing.T) {
	for _, tool := range []string{"kubectl", "promtool", "git", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool + " not installed")
		}
	}
	for name, edit := range map[string][2]string{
		"RUN writes /out/server, COPY takes /out/ai-load-service": {"-o /out/ai-load-service .", "-o /out/server ."},
		"COPY takes a file the build never writes":                {"COPY --from=build /out/ai-load-service ", "COPY --from=build /out/missing "},
	} {
		dir := t.TempDir()
		if out, err := exec.Command("sh", "-c", "git archive HEAD | tar -x -C "+dir).CombinedOutput(); err != nil {
			t.Skipf("git archive (needs a git checkout): %v\n%s", err, out)
		}
		df := filepath.Join(dir, "Dockerfile")
		data, err := os.ReadFile(df)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), edit[0]) {
			t.Fatalf("Dockerfile has no %q", edit[0])
		}
		if err := os.WriteFile(df, []byte(strings.Replace(string(data), edit[0], edit[1], 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("./.ci/manifests")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("%s: .ci/manifests exits 0 for a Dockerfile whose image cannot be built:\n%s", name, firstLines(string(out), 8))
		}
	}
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, "\n")
}

// TestReviewKRunbooksNamePanelsThatDoNotExist: two alert runbooks send the
// on-call to dashboard panels that dashboard.json does not have:
// AiLoadServiceAnomalySpike (prometheusrule.yaml:41) "Open the dashboard's
// anomalies by metric", which docs/deploy.md:121 says cannot exist
// (anomaly_detection_total has no metric label); AiLoadServiceSnapshotsPending
// (prometheusrule.yaml:59) "the snapshot failures and duration panels",
// while no panel queries snapshot_duration_seconds.
func TestReviewKRunbooksNamePanelsThatDoNotExist(t *testing.T) {
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(mustRead(t, "manifests/base/dashboard.json"), &d); err != nil {
		t.Fatal(err)
	}
	has := func(re string) bool {
		for _, p := range d.Panels {
			for _, q := range p.Targets {
				if regexp.MustCompile(re).MatchString(q.Expr) {
					return true
				}
			}
		}
		return false
	}
	rules := string(mustRead(t, "manifests/base/prometheusrule.yaml"))
	if strings.Contains(rules, "dashboard's anomalies by metric") && !has(`(anomaly_detection_total|anomalous_samples_total)[^)]*\)*.*by \(metric\)|by \(metric\).*(anomaly_detection_total|anomalous_samples_total)`) {
		t.Errorf("AiLoadServiceAnomalySpike's runbook opens \"the dashboard's anomalies by metric\": no panel counts anomalies by metric")
	}
	if strings.Contains(rules, "snapshot failures and duration panels") && !has(`snapshot_duration_seconds`) {
		t.Errorf("AiLoadServiceSnapshotsPending's runbook names \"the snapshot failures and duration panels\": no panel queries snapshot_duration_seconds")
	}
}

// TestReviewKAnomalySpikeAfterIdle: AiLoadServiceAnomalySpike
// (prometheusrule.yaml:35) compares the last 5 minutes' anomaly rate with
// the previous hour's, in absolute counts. After an idle night (no
// samples, so no anomalies, for two hours) the fleet resumes at its usual
// rate: 1000 samples/s, 2 anomalies/s, the same 0.2%% share as before the
// pause. Nothing spiked, yet the previous hour's rate is 0, so the alert
// fires "at more than three times the rate of the last hour" 10 minutes
// into every morning (it stays until ~25 minutes in). The same happens
// in the first half hour of a new deployment (eval 17m): the previous
// hour's rate is computed over the few minutes the counter has existed.
func TestReviewKAnomalySpikeAfterIdle(t *testing.T) {
	promtoolCase(t, `  - name: AnomalySpike must not fire when traffic resumes at its usual anomaly share
    interval: 1m
    input_series:
      - series: 'anomaly_detection_total{job="ai-load-service",namespace="prod",pod="p1"}'
        values: '0+120x60 7200x120 7200+120x30'
      - series: 'samples_ingested_total{job="ai-load-service",namespace="prod",pod="p1"}'
        values: '0+60000x60 3600000x120 3600000+60000x30'
    alert_rule_test:
      - eval_time: 17m
        alertname: AiLoadServiceAnomalySpike
      - eval_time: 198m
        alertname: AiLoadServiceAnomalySpike
`)
}

// TestReviewKIngressExposesInternalHandoff: the minikube overlay's Ingress
// (manifests/overlays/minikube/ingress.yaml) routes path "/" (Prefix) to
// the Service, so /internal/v1/handoff and /internal/v1/claim, the
// members' own endpoints, are reachable from outside the cluster; nor does
// any NetworkPolicy restrict who reaches the pods (networkpolicy.yaml only
// guards Redis). The handoff needs no credential: server/handoff.go:508-525
// checks only that X-Aiload-Forwarded is some host:port other than self.
// One unauthenticated request makes the pod give a device's state to
// 127.0.0.1:9 (not a member), after which the device can no longer be read.
func TestReviewKIngressExposesInternalHandoff(t *testing.T) {
	// Since the fix: the Ingress routes the clients' paths only. Every
	// path it routes must leave the members' /internal/v1/ routes (and
	// /metrics) out.
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatal("kubectl (with kustomize) is needed to render the overlay")
	}
	out, err := exec.Command("kubectl", "kustomize", "manifests/overlays/minikube").Output()
	if err != nil {
		t.Fatal(err)
	}
	ingress := regexp.MustCompile(`(?s)kind: Ingress\n.*?(\n---|$)`).FindString(string(out))
	paths := regexp.MustCompile(`(?m)path: (\S+)\n\s+pathType: (\S+)`).FindAllStringSubmatch(ingress, -1)
	if len(paths) == 0 {
		t.Fatalf("no paths in the Ingress:\n%s", ingress)
	}
	for _, internal := range []string{"/internal/v1/handoff", "/internal/v1/claim", "/metrics"} {
		for _, p := range paths {
			if p[2] == "Prefix" && (internal == p[1] || strings.HasPrefix(internal, strings.TrimSuffix(p[1], "/")+"/")) || p[2] != "Prefix" && p[1] == internal {
				t.Errorf("the Ingress path %s (%s) routes %s from outside the cluster", p[1], p[2], internal)
			}
		}
	}
}
