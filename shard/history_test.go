package shard

import "testing"

// The history ring never holds more slots than its limit, and keeps the
// newest limit alerts, newest first.
func TestHistoryCapacityBounded(t *testing.T) {
	for _, limit := range []int{1, 3, 4, 5, 100, 1000} {
		var d device
		for i := range 3 * limit {
			d.remember(Anomaly{TS: int64(i)}, limit)
			if cap(d.history) > limit {
				t.Fatalf("limit %d: after %d alerts the history has %d slots", limit, i+1, cap(d.history))
			}
		}
		got := d.recent()
		if len(got) != limit {
			t.Fatalf("limit %d: %d alerts remembered", limit, len(got))
		}
		for i, a := range got {
			if want := int64(3*limit - 1 - i); a.TS != want {
				t.Fatalf("limit %d: alert %d has ts %d; want %d", limit, i, a.TS, want)
			}
		}
	}
}
