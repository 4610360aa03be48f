package server

import (
	"strings"
	"testing"

	"ai-load-service/shard"
)

// TestMaxDevices: past MAX_DEVICES a request adding a device gets 429
// naming the setting, nothing of it is stored, it is counted, and the
// devices held keep working.
func TestMaxDevices(t *testing.T) {
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{}, shard.Options{MaxDevices: 2}, nil)
	url := "http://" + ln.Addr().String()
	two := "[" + sample("a", 1, `"t":1`) + "," + sample("b", 1, `"t":1`) + "]"
	if code, _, b := call(t, url, "POST", "/api/v1/ingest", two, nil); code != 200 {
		t.Fatalf("two devices: %d %s", code, b)
	}
	three := "[" + sample("a", 2, `"t":2`) + "," + sample("c", 2, `"t":2`) + "]"
	code, _, b := call(t, url, "POST", "/api/v1/ingest", three, nil)
	if code != 429 || !strings.Contains(b, "MAX_DEVICES") || !strings.HasPrefix(b, `{"error":`) {
		t.Fatalf("a third device: %d %s; want 429 naming MAX_DEVICES", code, b)
	}
	if _, _, d := call(t, url, "GET", "/api/v1/devices/a", "", nil); !strings.Contains(d, `"count":1,`) {
		t.Fatalf("the refused request applied a's sample: %s", d)
	}
	if code, _, b := call(t, url, "POST", "/metric", `{"device_id":"b","rps":3}`, nil); code != 200 {
		t.Fatalf("a held device: %d %s", code, b)
	}
	_, _, m := call(t, url, "GET", "/metrics", "", nil)
	if !strings.Contains(m, `rejections_total{reason="too_many_devices"} 1`+"\n") {
		t.Errorf("/metrics does not count the refusal:\n%s", grepLines(m, "rejections"))
	}
}
