package server

// Regression tests from a hostile review of what bad input gets back: each comment tells
// the defect as it was found; the test checks that it stays fixed.

import (
	"encoding/json"
	"strings"
	"testing"

	"ai-load-service/shard"
)

// TestReviewNotFoundNamesAServedPath: the router matches the path as sent
// (PathOriginal), but the 404 message quotes fasthttp's normalised path
// (ctx.Path(): "//" collapsed, "." and ".." resolved). A client that sends
// /api/v1//devices/d1 is told there is "no route for GET
// /api/v1/devices/d1", a path that is served (200). README: every error
// has "a message that says what to change".
func TestReviewNotFoundNamesAServedPath(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	s.json(t, "POST", "/api/v1/ingest", sample("d1", 1, `"t":1`), 200)
	for _, target := range []string{"/api/v1//devices/d1", "/api/v1/devices/./d1", "/api/v1/x/../devices/d1"} {
		code, body := rawGet(t, s.URL, target)
		if code != 404 {
			t.Fatalf("GET %s: %d %s", target, code, body)
		}
		var e struct{ Error string }
		_ = json.Unmarshal(body, &e)
		_, quoted, _ := strings.Cut(e.Error, `"`)
		quoted, _, _ = strings.Cut(quoted, `"`)
		if code2, _ := rawGet(t, s.URL, quoted); code2 == 200 {
			t.Errorf("GET %s: 404 %q names %s, which is served (200); the path sent was %s", target, e.Error, quoted, target)
		}
	}
}
