package server

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"

	"github.com/valyala/fasthttp"
)

// testServer is the handler behind a real loopback listener.
type testServer struct {
	URL string
	H   *Handler
	Set *shard.Set
}

func MustOpenServer(tb testing.TB, o shard.Options, maxBody int) *testServer {
	tb.Helper()
	ln, h := serveAPI(tb, "127.0.0.1:0", Options{MaxBodyBytes: maxBody}, o, nil)
	return &testServer{URL: "http://" + ln.Addr().String(), H: h, Set: h.set}
}

// serveAPI serves opts on addr ("127.0.0.1:0": any port) wired as main
// wires it (NewServer, Listen), with shards from so (2 by default) unless
// opts has them, and the API handler wrapped by wrap if not nil; all of it,
// and opts.Cluster, stops at cleanup.
func serveAPI(tb testing.TB, addr string, opts Options, so shard.Options,
	wrap func(api fasthttp.RequestHandler) fasthttp.RequestHandler) (*Listener, *Handler) {
	tb.Helper()
	if opts.Shards == nil {
		so.Shards = cmp.Or(so.Shards, 2)
		opts.Shards = shard.New(so)
	}
	h := New(opts)
	h.SetReady()
	nl, err := net.Listen("tcp", addr)
	if err != nil {
		opts.Shards.Stop()
		tb.Fatal(err)
	}
	ln := h.Listen(nl)
	srv := h.NewServer()
	if wrap != nil {
		srv.Handler = wrap(srv.Handler)
	}
	go srv.Serve(ln) //nolint:errcheck
	tb.Cleanup(func() {
		srv.Shutdown() //nolint:errcheck
		ln.Stop()
		opts.Shards.Stop()
		if opts.Cluster != nil {
			opts.Cluster.Stop()
		}
	})
	return ln, h
}

// do sends a request and returns the status, body and response.
func (s *testServer) do(tb testing.TB, method, path, body string) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, b
}

func (s *testServer) json(tb testing.TB, method, path, body string, wantStatus int) map[string]any {
	tb.Helper()
	code, b := s.do(tb, method, path, body)
	if code != wantStatus {
		tb.Fatalf("%s %s %.200s: unexpected status; got %d; want %d; body %s", method, path, body, code, wantStatus, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("%s %s: response is not a JSON object: %v: %s", method, path, err, b)
	}
	return m
}

func sample(device string, ts int64, metrics string) string {
	return fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{%s}}`, device, ts, metrics)
}

func TestBadInputStoresNothing(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 4}, 4096)
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprintf(`"m%d":1`, i)
	}
	long := strings.Repeat("a", 129)
	type tc struct {
		name, path, body string
		status           int
		errHas           string
		index            int // -1: no index field
	}
	cases := []tc{
		{"invalid JSON", "/api/v1/ingest", `{"device":`, 400, "invalid JSON", -1},
		{"empty body", "/api/v1/ingest", ``, 400, "invalid JSON", -1},
		{"empty batch", "/api/v1/ingest", `[]`, 400, "empty batch", -1},
		{"number body", "/api/v1/ingest", `42`, 400, "sample object", -1},
		{"missing device", "/api/v1/ingest", `{"metrics":{"t":1}}`, 400, `missing "device"`, -1},
		{"empty device", "/api/v1/ingest", sample("", 1, `"t":1`), 400, `"device" must be`, -1},
		{"long device", "/api/v1/ingest", sample(long, 1, `"t":1`), 400, `"device" must be`, -1},
		{"device with space", "/api/v1/ingest", sample("a b", 1, `"t":1`), 400, `"device" must be`, -1},
		{"device with slash", "/api/v1/ingest", sample("a/b", 1, `"t":1`), 400, `"device" must be`, -1},
		{"device number", "/api/v1/ingest", `{"device":5,"metrics":{"t":1}}`, 400, `"device" must be`, -1},
		{"ts fraction", "/api/v1/ingest", `{"device":"d","ts":1.5,"metrics":{"t":1}}`, 400, `"ts" must be`, -1},
		{"ts string", "/api/v1/ingest", `{"device":"d","ts":"1","metrics":{"t":1}}`, 400, `"ts" must be`, -1},
		{"ts negative", "/api/v1/ingest", `{"device":"d","ts":-1,"metrics":{"t":1}}`, 400, `"ts" must be`, -1},
		{"missing metrics", "/api/v1/ingest", `{"device":"d"}`, 400, `missing "metrics"`, -1},
		{"metrics array", "/api/v1/ingest", `{"device":"d","metrics":[1]}`, 400, `"metrics" must be an object`, -1},
		{"no metrics", "/api/v1/ingest", sample("d", 1, ``), 400, "1-64 entries", -1},
		{"65 metrics", "/api/v1/ingest", sample("d", 1, strings.Join(many, ",")), 400, "1-64 entries; got 65", -1},
		{"bad metric name", "/api/v1/ingest", sample("d", 1, `"a b":1`), 400, "metric name", -1},
		{"long metric name", "/api/v1/ingest", sample("d", 1, `"`+strings.Repeat("m", 65)+`":1`), 400, "metric name", -1},
		{"string value", "/api/v1/ingest", sample("d", 1, `"t":"1"`), 400, "must be a number", -1},
		{"null value", "/api/v1/ingest", sample("d", 1, `"t":null`), 400, "must be a number", -1},
		{"bool value", "/api/v1/ingest", sample("d", 1, `"t":true`), 400, "must be a number", -1},
		{"overflowing value", "/api/v1/ingest", sample("d", 1, `"t":1e999`), 400, "finite", -1},
		{"NaN literal", "/api/v1/ingest", sample("d", 1, `"t":NaN`), 400, "", -1},
		{"huge value", "/api/v1/ingest", sample("d", 1, `"t":1e200`), 400, "out of range", -1},
		{"duplicate device key", "/api/v1/ingest", `{"device":"d","device":"e","metrics":{"t":1}}`, 400, `duplicate field "device"`, -1},
		{"duplicate metric", "/api/v1/ingest", sample("d", 1, `"t":1,"t":2`), 400, `duplicate metric "t"`, -1},
		{"bad element in batch", "/api/v1/ingest", "[" + sample("d", 1, `"t":1`) + "," + sample("e", 1, `"t":1`) + `,{"device":"f","metrics":{"t":"x"}}]`, 400, "must be a number", 2},
		{"non-object in batch", "/api/v1/ingest", "[" + sample("d", 1, `"t":1`) + `,7]`, 400, "must be a JSON object", 1},
		{"trailing garbage", "/api/v1/ingest", sample("d", 1, `"t":1`) + "x", 400, "invalid JSON", -1},
		{"too large", "/api/v1/ingest", `[` + strings.Repeat(sample("d", 1, `"t":1`)+",", 200) + sample("d", 1, `"t":1`) + `]`, 413, "exceeds 4096 bytes", -1},
		{"metric: no numeric field", "/metric", `{"device_id":"d","name":"x"}`, 400, "no numeric field", -1},
		{"metric: array", "/metric", `[1]`, 400, "JSON object", -1},
		{"metric: bad device_id", "/metric", `{"device_id":"a b","rps":1}`, 400, `"device_id" must be`, -1},
		{"metric: string timestamp", "/metric", `{"rps":1,"timestamp":"now"}`, 400, `"timestamp" must be`, -1},
		{"metric: duplicate", "/metric", `{"rps":1,"rps":2}`, 400, `duplicate metric "rps"`, -1},
		{"metric: bad name", "/metric", `{"rps load":1}`, 400, "metric name", -1},
		{"metric: infinite", "/metric", `{"rps":-1e999}`, 400, "finite", -1},
		{"metric: too large", "/metric", `{"rps":1,"pad":"` + strings.Repeat("x", 5000) + `"}`, 413, "exceeds", -1},
		{"wrong method ingest", "/api/v1/ingest", ``, 405, "not allowed", -1},
		{"wrong method metric", "/metric", ``, 405, "not allowed", -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := "POST"
			if c.status == 405 {
				method = "GET"
			}
			m := s.json(t, method, c.path, c.body, c.status)
			msg, _ := m["error"].(string)
			if msg == "" || !strings.Contains(msg, c.errHas) {
				t.Fatalf("unexpected error message; got %q; want it to contain %q", msg, c.errHas)
			}
			idx, hasIdx := m["index"].(float64)
			if c.index < 0 && hasIdx || c.index >= 0 && (!hasIdx || int(idx) != c.index) {
				t.Fatalf("unexpected index; got %v; want %d", m["index"], c.index)
			}
			sum := s.json(t, "GET", "/analyze", "", 200)
			if sum["total_metrics"].(float64) != 0 || sum["devices"].(float64) != 0 {
				t.Fatalf("bad input stored something: %v", sum)
			}
		})
	}
	for _, d := range []string{"d", "e", "f", "default"} {
		s.json(t, "GET", "/api/v1/devices/"+d, "", 404)
	}
}

func TestIngestAndQuery(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 4, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1, WindowSize: 5, MinSamples: 3}, 1<<20)
	var batch []string
	for i := range 5 {
		batch = append(batch, sample("sensor-42", int64(1000+i), fmt.Sprintf(`"temp":%d,"hum":40`, 20+i%2)))
		batch = append(batch, sample("sensor-7", int64(1000+i), `"temp":5`))
	}
	m := s.json(t, "POST", "/api/v1/ingest", "["+strings.Join(batch, ",")+"]", 200)
	if m["accepted"].(float64) != 10 || len(m["anomalies"].([]any)) != 0 {
		t.Fatalf("unexpected response %v", m)
	}
	// Spikes on both devices in one batch come back in sample order, with
	// an unknown field ignored and an escaped device ID decoded.
	body := `[{"device":"sensor-7","ts":2000,"metrics":{"temp":50},"fw":"1.2"},` +
		`{"device":"sensor\u002d42","metrics":{"hum":40,"temp":99}}]`
	m = s.json(t, "POST", "/api/v1/ingest", body, 200)
	as := m["anomalies"].([]any)
	if len(as) != 2 {
		t.Fatalf("unexpected anomalies %v", as)
	}
	a0, a1 := as[0].(map[string]any), as[1].(map[string]any)
	if a0["device"] != "sensor-7" || a0["metric"] != "temp" || a0["ts"].(float64) != 2000 || a0["value"].(float64) != 50 || a0["mean"].(float64) != 5 || a0["stddev"].(float64) != 1e-9 { // a flat window: MIN_STDDEV
		t.Fatalf("unexpected first anomaly %v", a0)
	}
	if a1["device"] != "sensor-42" || a1["metric"] != "temp" || a1["ts"].(float64) < 1e12 {
		t.Fatalf("unexpected second anomaly (want server receive time as ts) %v", a1)
	}
	if z := a1["z"].(float64); z < 100 {
		t.Fatalf("unexpected z %v", z)
	}

	d := s.json(t, "GET", "/api/v1/devices/sensor-42", "", 200)
	temp := d["metrics"].(map[string]any)["temp"].(map[string]any)
	if temp["count"].(float64) != 6 || temp["window"].(float64) != 5 || temp["anomalies"].(float64) != 1 || temp["last"].(float64) != 99 {
		t.Fatalf("unexpected temp state %v", temp)
	}
	// Window after the update: 21, 20, 21, 20, 99.
	if mean := temp["mean"].(float64); mean != 36.2 {
		t.Fatalf("unexpected mean; got %v; want 36.2", mean)
	}
	h := s.json(t, "GET", "/api/v1/devices/sensor-7/anomalies", "", 200)
	if got := h["anomalies"].([]any); len(got) != 1 || got[0].(map[string]any)["value"].(float64) != 50 {
		t.Fatalf("unexpected history %v", got)
	}
	s.json(t, "GET", "/api/v1/devices/nobody", "", 404)
	s.json(t, "GET", "/api/v1/devices/nobody/anomalies", "", 404)
	s.json(t, "GET", "/api/v1/devices/bad%20id", "", 400)

	sum := s.json(t, "GET", "/analyze", "", 200)
	if sum["devices"].(float64) != 2 || sum["total_metrics"].(float64) != 18 || sum["anomaly_count"].(float64) != 2 ||
		sum["window_size"].(float64) != 5 || sum["threshold"].(float64) != 3 || sum["alert_cooldown"].(float64) != 0 || sum["algorithm"] != "zscore" {
		t.Fatalf("unexpected summary %v", sum)
	}
}

func TestPrototypeMetricRoute(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2, WindowSize: 50, MinSamples: 10}, 1<<20)
	var last map[string]any
	for i := range 12 {
		last = s.json(t, "POST", "/metric", fmt.Sprintf(`{"rps":%d,"cpu":55.1,"timestamp":1732560000,"note":"x"}`, 100+i%2), 200)
	}
	if last["status"] != "received" || last["device_id"] != "default" || last["window"].(float64) != 12 ||
		last["window_size"].(float64) != 50 || last["rolling_average"].(float64) != 100.5 || last["is_anomaly"] != false {
		t.Fatalf("unexpected response %v", last)
	}
	m := s.json(t, "POST", "/metric", `{"device_id":"edge-1","rps":1,"timestamp":1732560000123}`, 200)
	if m["device_id"] != "edge-1" {
		t.Fatalf("unexpected response %v", m)
	}
	m = s.json(t, "POST", "/metric", `{"rps":500,"cpu":55.1,"timestamp":1732560001}`, 200)
	if m["is_anomaly"] != true || len(m["anomalies"].([]any)) != 1 {
		t.Fatalf("spike not flagged: %v", m)
	}
	if ts := m["anomalies"].([]any)[0].(map[string]any)["ts"].(float64); ts != 1732560001000 {
		t.Fatalf("seconds timestamp not converted to ms; got %v", ts)
	}
	d := s.json(t, "GET", "/api/v1/devices/edge-1", "", 200)
	if ts := d["metrics"].(map[string]any)["rps"].(map[string]any)["updated_ts"].(float64); ts != 1732560000123 {
		t.Fatalf("ms timestamp changed; got %v", ts)
	}
}

func TestServiceRoutes(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	if m := s.json(t, "GET", "/health", "", 200); m["status"] != "ok" {
		t.Fatalf("unexpected health %v", m)
	}
	if m := s.json(t, "GET", "/ready", "", 200); m["status"] != "ready" {
		t.Fatalf("unexpected ready %v", m)
	}
	s.H.SetDraining()
	if m := s.json(t, "GET", "/ready", "", 503); !strings.Contains(m["error"].(string), "draining") {
		t.Fatalf("unexpected ready while draining %v", m)
	}
	s.H.SetReady()
	if m := s.json(t, "GET", "/no/such/route", "", 404); !strings.Contains(m["error"].(string), "no route") {
		t.Fatalf("unexpected 404 body %v", m)
	}
	code, body := s.do(t, "GET", "/", "")
	if code != 200 || !bytes.Contains(body, []byte("POST /api/v1/ingest")) {
		t.Fatalf("unexpected index %d %s", code, body)
	}
	s.json(t, "POST", "/api/v1/ingest", sample("d1", 1, `"temp":1,"hum":2`), 200)
	s.json(t, "POST", "/api/v1/ingest", "[]", 400)
	code, body = s.do(t, "GET", "/metrics", "")
	if code != 200 {
		t.Fatalf("unexpected /metrics status %d", code)
	}
	for _, want := range []string{
		`requests_total{route="/api/v1/ingest",method="POST",status="200"} 1`,
		`requests_total{route="/api/v1/ingest",method="POST",status="400"} 1`,
		`requests_total{route="other",method="GET",status="404"} 1`,
		`request_duration_seconds_bucket{route="/api/v1/ingest",le="+Inf"} 2`,
		"anomaly_detection_total 0",
		"samples_ingested_total 2",
		"active_devices 1",
		"active_streams 2",
		`shard_queue_depth{shard="1"} 0`,
		`rolling_average_current{metric="temp"} 1`,
		`rolling_average_current{metric="hum"} 2`,
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Fatalf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

func TestRollingAverageLabelsBounded(t *testing.T) {
	set := shard.New(shard.Options{Shards: 2})
	defer set.Stop()
	h := New(Options{Shards: set, MaxMetricLabels: 3})
	var b shard.Batch
	for i := range 10 {
		b.Reset()
		b.Add([]byte(fmt.Sprint("d", i)), 1)
		for j := range 10 - i { // m0 has the most streams, m9 the fewest
			b.AddMetric([]byte(fmt.Sprint("m", j)), float64(j))
		}
		b.AddMetric([]byte("_other"), 5) // a client's name must not collide with the overflow series
		if err := set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
	}
	by, err := set.MetricMeans()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	h.writeRollingAverages(&out, by)
	got := out.String()
	if n := strings.Count(got, "rolling_average_current{"); n != 4 {
		t.Fatalf("want 3 named series and (other); got %d:\n%s", n, got)
	}
	for _, want := range []string{`metric="_other"} 5`, `metric="m0"} 0`, `metric="m1"} 1`, `metric="(other)"}`} {
		if !strings.Contains(got, want) {
			t.Fatalf("missing %q in:\n%s", want, got)
		}
	}
}

func TestShutdownAnswers503(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	s.Set.Stop()
	m := s.json(t, "POST", "/api/v1/ingest", sample("d", 1, `"t":1`), 503)
	if !strings.Contains(m["error"].(string), "shutting down") {
		t.Fatalf("unexpected body %v", m)
	}
}

// TestMetricRouteWindowSizeFromRule: /metric reports the window size of the
// stream it describes, which a rule may set (it reported WINDOW_SIZE).
func TestMetricRouteWindowSizeFromRule(t *testing.T) {
	p := detect.Params{Kind: detect.Winsor, Window: 20, MinSamples: 5, Threshold: 4, MinStddev: 1e-9, Cooldown: 50, StepFloor: 0.5}
	s := MustOpenServer(t, shard.Options{Shards: 2, WindowSize: 50, Rules: []detect.Rule{{Match: "rps", Params: p}}}, 1<<20)
	m := s.json(t, "POST", "/metric", `{"rps":1,"cpu":2}`, 200)
	if m["window_size"].(float64) != 20 {
		t.Fatalf("window_size %v; want the rule's 20", m["window_size"])
	}
	m = s.json(t, "POST", "/metric", `{"cpu":2,"rps":1}`, 200)
	if m["window_size"].(float64) != 50 {
		t.Fatalf("window_size %v; want WINDOW_SIZE 50 for cpu", m["window_size"])
	}
}

// rawGet sends GET target exactly as given (no client-side escaping) and
// returns the status and body.
func rawGet(tb testing.TB, base, target string) (int, []byte) {
	tb.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		tb.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tb.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, b
}

// Clients that escape path segments send aa%3Abb for aa:bb: the device
// routes unescape the segment once, then validate it.
func TestDevicePathEscapes(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	s.json(t, "POST", "/api/v1/ingest", sample("aa:bb:cc", 1, `"t":1`), 200)
	cases := []struct {
		target string
		status int
		has    string // in the body
	}{
		{"/api/v1/devices/aa:bb:cc", 200, `"device":"aa:bb:cc"`},
		{"/api/v1/devices/aa%3Abb%3Acc", 200, `"device":"aa:bb:cc"`},
		{"/api/v1/devices/aa%3abb%3acc", 200, `"device":"aa:bb:cc"`},
		{"/api/v1/devices/%61a:bb:cc?x=%3A", 200, `"device":"aa:bb:cc"`},
		{"/api/v1/devices/aa%3Abb%3Acc/anomalies", 200, `"anomalies":[]`},
		{"/api/v1/devices/aa%3Abb%3Acd", 404, `device \"aa:bb:cd\" not found`},
		// Decoded once: %253A is the literal %3A, and % is not a device character.
		{"/api/v1/devices/aa%253Abb%253Acc", 400, "device ID must be"},
		{"/api/v1/devices/aa%253Abb%253Acc/anomalies", 400, "device ID must be"},
		{"/api/v1/devices/%ZZ", 400, `invalid URL escape \"%ZZ\"`},
		{"/api/v1/devices/aa%3/anomalies", 400, `invalid URL escape \"%3\"`},
		// An escaped slash stays inside the segment, and is not a device character.
		{"/api/v1/devices/aa%2Fanomalies", 400, "device ID must be"},
		{"/api/v1/devices/aa%20bb", 400, "device ID must be"},
		{"/api/v1/devices/aa+bb", 400, "device ID must be"},
	}
	for _, c := range cases {
		code, body := rawGet(t, s.URL, c.target)
		if code != c.status || !bytes.Contains(body, []byte(c.has)) {
			t.Errorf("GET %s: got %d %s; want %d with %s", c.target, code, body, c.status, c.has)
		}
	}
}

// Requests fasthttp rejects before routing are counted under the route
// their path names when fasthttp still has the request line.
func TestRejectedRequestsCountedByRoute(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1024)
	addr := strings.TrimPrefix(s.URL, "http://")
	send := func(req string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for _, c := range []struct{ req, status string }{
		{"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "413"},
		{"POST /api/v1/ingest?pretty=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "413"},
		{"POST /metric HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "413"},
		{"POST /no/such/route HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", "413"},
		{"NOT A REQUEST\r\n\r\n", "400"},
	} {
		if got := send(c.req); !strings.HasPrefix(got, "HTTP/1.1 "+c.status) {
			t.Fatalf("%q: got %q; want %s", c.req, got, c.status)
		}
	}
	_, page := s.do(t, "GET", "/metrics", "")
	for _, want := range []string{
		`requests_total{route="/api/v1/ingest",method="POST",status="413"} 2`,
		`requests_total{route="/metric",method="POST",status="413"} 1`,
		`requests_total{route="other",method="POST",status="413"} 1`,
		`request_duration_seconds_count{route="/api/v1/ingest"} 2`,
	} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !regexp.MustCompile(`requests_total\{route="other",method="(other|[A-Z]+)",status="400"\} 1`).Match(page) {
		t.Errorf("/metrics lacks the unparsable request under route=\"other\"")
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", page)
	}
}

// /metrics carries one TYPE line per family, with the family's type,
// including the families written by hand.
func TestMetricsTypeLines(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	s.json(t, "POST", "/api/v1/ingest", sample("d1", 1, `"temp":1,"hum":2`), 200)
	_, page := s.do(t, "GET", "/metrics", "")
	for family, typ := range map[string]string{
		"devices_evicted_total":    "counter",
		"rolling_average_current":  "gauge",
		"requests_total":           "counter",
		"request_duration_seconds": "histogram",
		"samples_ingested_total":   "counter",
		"active_devices":           "gauge",
		"go_goroutines":            "gauge",
	} {
		if n := bytes.Count(page, []byte("# TYPE "+family+" ")); n != 1 {
			t.Errorf("%d TYPE lines for %s; want 1", n, family)
		}
		if !bytes.Contains(page, []byte("# TYPE "+family+" "+typ+"\n")) {
			t.Errorf("%s is not typed %s", family, typ)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", page)
	}
}

// TestStreamLimitAnswers429: a request naming a new metric for a device at
// MAX_STREAMS_PER_DEVICE gets 429 with a JSON error naming the setting and
// the sample's index, and nothing of it is applied.
func TestStreamLimitAnswers429(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 4, MaxStreams: 2}, 1<<20)
	s.json(t, "POST", "/api/v1/ingest", sample("d", 1, `"a":1,"b":2`), 200)
	m := s.json(t, "POST", "/api/v1/ingest", "["+sample("other", 1, `"a":1`)+","+sample("d", 2, `"a":1,"c":3`)+"]", 429)
	if msg, _ := m["error"].(string); !strings.Contains(msg, "MAX_STREAMS_PER_DEVICE") || !strings.Contains(msg, `"c"`) || m["index"].(float64) != 1 {
		t.Fatalf("unexpected error %v", m)
	}
	s.json(t, "GET", "/api/v1/devices/other", "", 404)
	d := s.json(t, "GET", "/api/v1/devices/d", "", 200)
	if a := d["metrics"].(map[string]any)["a"].(map[string]any); a["count"].(float64) != 1 {
		t.Fatalf("d changed by a refused request: %v", d)
	}
}
