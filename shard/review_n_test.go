package shard

import (
	"testing"
	"time"

	"ai-load-service/shard/detect"
)

// TestReviewNRestoreTimeCooldownIdentical is a regression guard (it passes
// today): snapshot version 4 must carry the time cooldown's end and the
// ranges state so that a restored stream decides exactly as the original,
// for every kind, with ALERT_COOLDOWN given in time (20 ms of ts here).
func TestReviewNRestoreTimeCooldownIdentical(t *testing.T) {
	for _, k := range []detect.Kind{detect.ZScore, detect.Winsor, detect.EWMA, detect.Ranges} {
		st := newMemStore()
		o := Options{Shards: 2, Detector: k, WindowSize: 6, MinSamples: 3, Cooldown: -1, CooldownTime: 20 * time.Millisecond, Store: st}
		a := MustNewSet(t, o)
		n := 23
		if k == detect.Ranges {
			n += 150
		}
		for i := range n {
			v := float64(i % 3)
			if i == n-3 {
				v = 100
			}
			ingestOne(t, a, "d", int64(i), map[string]float64{"temp": v, "hum": 5})
		}
		mustCollect(t, a, st, false)
		b := MustNewSet(t, o)
		sameFuture(t, a, b, "d", n)
	}
}
