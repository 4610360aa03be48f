package server

import (
	"strings"
	"testing"

	"ai-load-service/shard"
)

// TestReviewP_BodyTooLargeNamesNoSetting: issue 15 asks that every
// rejection be a JSON error naming the limit and the setting that changes
// it, and the other limits do (MAX_BATCH's 413, MAX_DEVICES' and
// MAX_STREAMS_PER_DEVICE's 429, MAX_CONNS_PER_IP's 429, READ_TIMEOUT's
// 408). The body-size 413 (errors.go bodyTooLarge, from both the handler
// and fasthttp's own refusal) says "request body exceeds 4096 bytes; split
// the batch": the limit, but not MAX_BODY_BYTES, so an operator seeing
// clients refused cannot tell from the answer which setting refused them.
func TestReviewP_BodyTooLargeNamesNoSetting(t *testing.T) {
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{MaxBodyBytes: 4096}, shard.Options{}, nil)
	url := "http://" + ln.Addr().String()
	for _, c := range []struct{ path, body string }{
		{"/api/v1/ingest", "[" + strings.Repeat(sample("d", 1, `"t":1`)+",", 200) + sample("d", 1, `"t":1`) + "]"},
		{"/metric", `{"rps":1,"pad":"` + strings.Repeat("x", 5000) + `"}`},
	} {
		code, _, b := call(t, url, "POST", c.path, c.body, nil)
		if code != 413 || !strings.HasPrefix(b, `{"error":`) {
			t.Fatalf("%s: %d %s; want a 413 JSON error", c.path, code, b)
		}
		if !strings.Contains(b, "MAX_BODY_BYTES") {
			t.Errorf("%s: 413 %s: names the limit but not the setting that changes it (MAX_BODY_BYTES)", c.path, strings.TrimSpace(b))
		}
	}
}
