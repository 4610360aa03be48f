package persist

import (
	"context"
	"fmt"
	"testing"
	"time"

	"ai-load-service/shard"
)

// BenchmarkRound times one snapshot round over 20,000 changed devices
// (2 metrics, full windows of 50) against a real redis-server: "collect"
// is the shards' encoding alone, the baseline; "round" adds writing it to
// Redis (appending to its file, fsynced every second, as Redis is usually
// configured). ns/device is per changed device.
func BenchmarkRound(b *testing.B) {
	const devices = 20000
	r := MustStartRedis(b, "--appendonly", "no")
	s := MustOpenStackWith(b, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 10 * time.Second},
		shard.Options{Shards: 2})
	ids := make([][]byte, devices)
	for i := range ids {
		ids[i] = fmt.Appendf(nil, "dev-%06d", i)
	}
	var batch shard.Batch
	step := 0
	touchAll := func() {
		for lo := 0; lo < devices; lo += 100 {
			batch.Reset()
			for _, id := range ids[lo : lo+100] {
				batch.Add(id, int64(step))
				batch.AddMetric([]byte("cpu"), float64(step%7))
				batch.AddMetric([]byte("rps"), float64(step%11))
			}
			if err := s.set.Ingest(&batch); err != nil {
				b.Fatal(err)
			}
		}
		step++
	}
	for range 50 { // full windows
		touchAll()
	}
	if _, _, err := s.w.round(context.Background(), false, true); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		flush bool
	}{{"collect", false}, {"round", true}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				touchAll()
				b.StartTimer()
				if _, _, err := s.w.round(context.Background(), false, c.flush); err != nil {
					b.Fatal(err)
				}
				if !c.flush {
					b.StopTimer()
					s.w.mu.Lock()
					clear(s.w.pending)
					s.w.mu.Unlock()
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*devices), "ns/device")
		})
	}
}
