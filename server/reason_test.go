package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"ai-load-service/shard"
)

// TestAlertReason: every alert names the test that raised it, in the
// ingest answer and in the device's history, for the default detector's
// z-score and range channels alike.
func TestAlertReason(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	var b strings.Builder
	b.WriteByte('[')
	for i := range 300 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(sample("r-1", int64(i)*1000, fmt.Sprintf(`"temp":%g`, 20+float64(i%5)*0.1)))
	}
	b.WriteByte(']')
	if m := s.json(t, "POST", "/api/v1/ingest", b.String(), 200); len(m["anomalies"].([]any)) != 0 {
		t.Fatalf("alerts on a quiet stream: %v", m["anomalies"])
	}
	m := s.json(t, "POST", "/api/v1/ingest", sample("r-1", 300000, `"temp":90`), 200)
	as := m["anomalies"].([]any)
	// The range channels name an alert before the z-score does.
	if len(as) != 1 || as[0].(map[string]any)["reason"] != "value_range" {
		t.Fatalf("spike: %v; want one alert with reason value_range", as)
	}
	// A slow climb out of the range the stream has kept: no z-score
	// reaches 5 once the window has followed it, the value range sees it.
	var reasons []string
	for i := range 200 {
		m := s.json(t, "POST", "/api/v1/ingest", sample("r-1", 301000+int64(i)*1000, fmt.Sprintf(`"temp":%g`, 20.4+float64(i)*0.05)), 200)
		for _, a := range m["anomalies"].([]any) {
			reasons = append(reasons, a.(map[string]any)["reason"].(string))
		}
	}
	h := s.json(t, "GET", "/api/v1/devices/r-1/anomalies", "", 200)["anomalies"].([]any)
	slices.Reverse(h) // newest first
	if len(h) != 1+len(reasons) || h[0].(map[string]any)["reason"] != "value_range" {
		t.Fatalf("history %v; want the spike's value_range alert, then %v", h, reasons)
	}
	for i, r := range reasons {
		if got := h[1+i].(map[string]any)["reason"]; got != r || r == "" {
			t.Fatalf("history alert %d: reason %v; the ingest answer said %q", 1+i, got, r)
		}
	}
	if !strings.Contains(strings.Join(reasons, ","), "range") {
		t.Fatalf("climb alerts %v: none from a range channel", reasons)
	}
}
