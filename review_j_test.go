package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ai-load-service/server/cluster/dnstest"
)

// TestReviewJOperatorEndpointLabel: prometheus-operator turns a
// ServiceMonitor endpoint with `port: http` into a scrape job whose targets
// carry endpoint="http" (plus namespace, service, pod, container, job).
// honorLabels is not set in servicemonitor.yaml, so the service's own
// `endpoint` label (the route) is renamed exported_endpoint. Every query
// that filters or groups on endpoint then sees "http" instead of the route.
// This reproduces the operator's target labels with static labels on a real
// Prometheus (the same conflict rule applies to any target label).
func TestReviewJOperatorEndpointLabel(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		t.Fatal("prometheus not found")
	}
	bin := buildService(t)
	a := freeAddr(t)
	s := startServiceAt(t, bin, a)
	defer feed(s, 20)()

	dir := t.TempDir()
	// What the operator generates for servicemonitor.yaml, as target labels.
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: serviceMonitor/default/ai-load-service/0
    metrics_path: /metrics
    static_configs:
      - targets: [%q]
        labels: {job: ai-load-service, endpoint: http, namespace: default, service: ai-load-service, pod: ai-load-service-abc, container: ai-load-service}
`, a)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	prom := exec.Command("prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+web)
	var logs bytes.Buffer
	prom.Stdout, prom.Stderr = &logs, &logs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { prom.Process.Kill(); prom.Wait() }() //nolint:errcheck
	type series struct {
		Metric map[string]string
	}
	api := func(q string) []series {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var r struct{ Data struct{ Result []series } }
		json.NewDecoder(resp.Body).Decode(&r) //nolint:errcheck
		return r.Data.Result
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		if len(api(`count_over_time(up{job="ai-load-service"}[5m]) >= 4`)) == 1 {
			break
		}
		if time.Now().After(deadline) {
			prom.Process.Kill() //nolint:errcheck
			prom.Wait()         //nolint:errcheck
			t.Fatalf("not scraped:\n%s", logs.String())
		}
	}
	got := api(`count by (endpoint, exported_endpoint) (request_duration_seconds_bucket{job="ai-load-service"})`)
	t.Logf("request_duration_seconds_bucket label sets as stored: %v", got)

	qs := queries(t)
	var latencyAlert, latencyPanel, byRoute string
	for q, from := range qs {
		switch {
		case from == "alert AiLoadServiceLatencyHigh":
			latencyAlert = regexp.MustCompile(`\s*>\s*0\.5\s*$`).ReplaceAllString(q, "")
		case from == "dashboard panel Latency of ingest (p50, p95, p99)" && strings.Contains(q, "0.95"):
			latencyPanel = q
		case from == "dashboard panel Requests per second by route":
			byRoute = q
		}
	}
	if latencyAlert == "" || latencyPanel == "" || byRoute == "" {
		t.Fatal("queries not found")
	}
	if n := len(api(latencyAlert)); n == 0 {
		t.Errorf("AiLoadServiceLatencyHigh (prometheusrule.yaml:26) without its threshold returns nothing under the operator's labels: the alert can never fire\n%s", latencyAlert)
	}
	if n := len(api(latencyPanel)); n == 0 {
		t.Errorf("dashboard 'Latency of ingest' returns nothing under the operator's labels\n%s", latencyPanel)
	}
	routes := []string{}
	for _, r := range api(byRoute) {
		routes = append(routes, r.Metric["endpoint"])
	}
	if len(routes) == 0 || strings.Join(routes, ",") == "http" {
		t.Errorf("dashboard 'Requests per second by route' groups by endpoint and shows routes %q: the port name, not the routes", routes)
	}
}

// manifestEnv returns the container's environment as Kubernetes builds it
// for a pod with podIP, in namespace ns: the ConfigMap (envFrom), then the
// Deployment's env in order, $(VAR) expanded from what is defined earlier,
// downward-API values substituted from the base's limits.
func manifestEnv(t *testing.T, podIP, ns string) []string {
	t.Helper()
	cm := mustRead(t, "manifests/base/config.env")
	dep := string(mustRead(t, "manifests/base/deployment.yaml"))
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)=(.*)$`).FindAllSubmatch(cm, -1) {
		set(string(m[1]), string(m[2]))
	}
	// Deployment env: each "- name: X" then value: or valueFrom.
	block := dep[strings.Index(dep, "          env:\n"):]
	block = block[:strings.Index(block, "          resources:")]
	items := regexp.MustCompile(`(?m)^            - name: `).Split(block, -1)[1:]
	expand := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, it := range items {
		name := strings.TrimSpace(strings.SplitN(it, "\n", 2)[0])
		var v string
		switch {
		case strings.Contains(it, "value: "):
			v = regexp.MustCompile(`value: "(.*)"`).FindStringSubmatch(it)[1]
			v = expand.ReplaceAllStringFunc(v, func(s string) string {
				k := expand.FindStringSubmatch(s)[1]
				if x, ok := env[k]; ok {
					return x
				}
				return s // Kubernetes leaves unknown references as they are
			})
		case strings.Contains(it, "status.podIP"):
			v = podIP
		case strings.Contains(it, "metadata.namespace"):
			v = ns
		case strings.Contains(it, "limits.cpu"):
			v = "2" // limits.cpu "2", divisor 1
		case strings.Contains(it, "limits.memory"):
			v = "1024" // limits.memory 1Gi, divisor 1Mi
		default:
			t.Fatalf("env %s: unknown source:\n%s", name, it)
		}
		set(name, v)
	}
	var out []string
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out
}

// runManifestPod starts the binary with exactly the manifests' environment
// (port 8080 replaced by a free one, REDIS_ADDR by a local Redis, and the
// stand-in DNS server for PEERS_DNS) and reports whether it became ready.
func runManifestPod(t *testing.T, podIP string) (ready bool, logs string, env []string) {
	t.Helper()
	bin := buildService(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	env = manifestEnv(t, podIP, "default")
	var dnsName string
	for i, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		v = strings.ReplaceAll(v, "8080", port)
		switch k {
		case "REDIS_ADDR":
			v = startRedis(t)
		case "PEERS_DNS":
			dnsName = v
		}
		env[i] = k + "=" + v
	}
	if !strings.HasSuffix(dnsName, ".") {
		// A short name (since review J): in a pod the search list makes it
		// <name>.<namespace>.svc.<cluster domain>; here the stand-in
		// answers the bare name, which the resolver tries too.
		dnsName += "."
	}
	srv := dnstest.Start(t, dnsName, podIP)
	env = append(env, "PEERS_DNS_SERVER="+srv.Addr)
	var buf bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()       //nolint:errcheck
	defer func() { cmd.Process.Kill(); <-exited }() //nolint:errcheck
	base := "http://" + net.JoinHostPort(podIP, port)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			return false, buf.String(), env
		default:
		}
		if resp, err := http.Get(base + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return true, "", env
			}
		}
	}
	cmd.Process.Kill() //nolint:errcheck
	<-exited
	return false, buf.String(), env
}

// TestReviewJManifestEnvIPv4: the ConfigMap's and the Deployment's
// environment, substituted as the kubelet does, starts the binary and it
// becomes ready (IPv4 pod).
func TestReviewJManifestEnvIPv4(t *testing.T) {
	if ready, logs, env := runManifestPod(t, "127.0.0.1"); !ready {
		t.Fatalf("not ready with the manifests' environment %q:\n%s", env, logs)
	}
}

// TestReviewJManifestEnvIPv6: the same on an IPv6 pod (IPv6-only or
// IPv6-primary dual-stack cluster). SELF_ADDR is "$(POD_IP):8080"
// (deployment.yaml:58), which for an IPv6 pod IP is "fd00::5:8080", not
// "[fd00::5]:8080": membership's parseAddr rejects it, while the DNS
// source (AAAA records) is supported and joins with brackets.
func TestReviewJManifestEnvIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback")
	} else {
		ln.Close()
	}
	if ready, logs, env := runManifestPod(t, "::1"); !ready {
		t.Fatalf("an IPv6 pod never becomes ready with the manifests' environment %q:\n%s", env, logs)
	}
}
