package server

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"ai-load-service/shard"
)

// TestHostileBodies sends bodies an attacker or a broken device would, over
// a real listener: each gets the right 4xx with a JSON error, nothing of
// it is stored, and the service keeps serving with bounded memory.
func TestHostileBodies(t *testing.T) {
	ln, h := serveAPI(t, "127.0.0.1:0", Options{MaxBodyBytes: 1 << 20}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	valid := `[{"device":"dev-1","ts":1732560000123,"metrics":{"temp":21.5,"hum":40}},{"device":"dev-2","metrics":{"v":-1.5e3}}]`
	type tc struct {
		name, body string
		status     int
		has        string
	}
	cases := []tc{
		{"100k nested brackets", strings.Repeat("[", 100000), 400, ""},
		{"100k nested objects in a field", `{"device":"d","x":` + strings.Repeat(`{"a":`, 100000) + `1` + strings.Repeat(`}`, 100000) + `,"metrics":{"m":1}}`, 400, "nest"},
		{"invalid UTF-8 in an ID", "{\"device\":\"d\xff\xfe\",\"metrics\":{\"m\":1}}", 400, ""},
		{"invalid UTF-8 in a name", "{\"device\":\"d\",\"metrics\":{\"m\xc3\x28\":1}}", 400, ""},
		{"a lone surrogate escape in an ID", `{"device":"d\ud800","metrics":{"m":1}}`, 400, ""},
		{"5,000 metrics in one sample", `{"device":"d","metrics":{` + metricsN(5000) + `}}`, 400, "64"},
		{"a 10k-digit integer", `{"device":"d","metrics":{"m":` + strings.Repeat("9", 10000) + `}}`, 400, ""},
		{"a 10k-digit exponent", `{"device":"d","metrics":{"m":1e` + strings.Repeat("9", 10000) + `}}`, 400, ""},
		{"0x10", `{"device":"d","metrics":{"m":0x10}}`, 400, ""},
		{"a leading +", `{"device":"d","metrics":{"m":+1}}`, 400, ""},
		{"a leading zero", `{"device":"d","metrics":{"m":01}}`, 400, ""},
		{"NaN", `{"device":"d","metrics":{"m":NaN}}`, 400, ""},
		{"Infinity", `{"device":"d","metrics":{"m":1e999}}`, 400, ""},
		{"duplicate device key", `{"device":"d","device":"e","metrics":{"m":1}}`, 400, "duplicate"},
		{"duplicate metrics key", `{"device":"d","metrics":{"m":1},"metrics":{"n":1}}`, 400, "duplicate"},
		{"duplicate metric name", `{"device":"d","metrics":{"m":1,"m":2}}`, 400, "duplicate"},
		{"duplicate ts", `{"device":"d","ts":1,"ts":2,"metrics":{"m":1}}`, 400, "duplicate"},
		{"duplicate key in the second sample", `[{"device":"d","metrics":{"m":1}},{"device":"e","metrics":{"m":1,"m":1}}]`, 400, "duplicate"},
		{"trailing garbage", valid + "x", 400, ""},
		{"two values", valid + valid, 400, ""},
		{"an ID of 129 bytes", `{"device":"` + strings.Repeat("a", 129) + `","metrics":{"m":1}}`, 400, ""},
		{"a control character in an ID", "{\"device\":\"d\x01\",\"metrics\":{\"m\":1}}", 400, ""},
	}
	// Numbers JSON allows, which must be accepted as the values they are.
	for k, c := range []struct{ num, want string }{{"-0", `"last":-0`}, {"1e-400", `"last":0`}, {"0.0000000000000000000000000000001", `"last":1e-31`}, {"1E+2", `"last":100`}} {
		dev := fmt.Sprintf("num-%d", k)
		if code, _, b := call(t, url, "POST", "/api/v1/ingest", `{"device":"`+dev+`","metrics":{"m":`+c.num+`}}`, nil); code != 200 {
			t.Fatalf("%s: %d %s; want 200", c.num, code, b)
		}
		if _, _, b := call(t, url, "GET", "/api/v1/devices/"+dev, "", nil); !strings.Contains(b, c.want) {
			t.Fatalf("%s stored as %s; want %s", c.num, b, c.want)
		}
	}
	// Every cut of a valid body is invalid, and so is every body with one
	// byte replaced by a quote or a bracket.
	for i := range len(valid) {
		cases = append(cases, tc{fmt.Sprintf("cut at byte %d", i), valid[:i], 400, ""})
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		b := make([]byte, rng.IntN(4096))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		if i%3 == 0 && len(b) > 0 {
			b[0] = '[' // past the first check
		}
		cases = append(cases, tc{fmt.Sprintf("random bytes %d", i), string(b), 400, ""})
	}
	devices := h.set.Devices()
	for _, c := range cases {
		code, _, b := call(t, url, "POST", "/api/v1/ingest", c.body, nil)
		if code != c.status || !strings.HasPrefix(b, `{"error":`) || !strings.Contains(strings.ToLower(b), c.has) {
			t.Fatalf("%s: %d %.200s; want %d with a JSON error containing %q", c.name, code, b, c.status, c.has)
		}
	}
	if got := h.set.Devices(); got != devices {
		t.Fatalf("hostile bodies stored %d devices", got-devices)
	}
	// Still serving, and a valid body still applies.
	if code, _, b := call(t, url, "POST", "/api/v1/ingest", valid, nil); code != 200 {
		t.Fatalf("valid body after the attack: %d %s", code, b)
	}
	// Bounded memory: the attack leaves no garbage held.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > 256<<20 {
		t.Fatalf("heap in use %d MiB after the hostile bodies", ms.HeapInuse>>20)
	}
}

func metricsN(n int) string {
	var b bytes.Buffer
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"m%d":%d`, i, i)
	}
	return b.String()
}

var _ = http.StatusOK
