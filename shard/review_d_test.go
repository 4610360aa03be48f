package shard

// Failing tests from hostile review D. Each test's comment states the
// defect and the claim it contradicts.

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReviewDScrapeWalksStreamsForZeroMeanMetrics: README (Metrics,
// rolling_average_current): "a scrape costs O(metric names) (12.6 µs at
// 100k streams, against 35.6 ms for the walk /analyze does)". The per-name
// sum is recomputed from every stream of the shard whenever
// 2^-52·mag > 1e-13·|sum| (nameAgg.exact, shard.go:908), mag being the sum
// of |changes| since the last recompute. For a metric whose values centre
// on zero (an accelerometer axis, a signed error, a delta: common in IoT)
// the sum of the streams' means is near zero while mag grows with every
// sample, so nearly every scrape walks every device and stream of every
// shard (copyNames, shard.go:912-935), on the shard goroutines, blocking
// ingest meanwhile: O(streams), not O(names). BenchmarkScrape does not see
// it: its values are positive, and it scrapes with no ingest in between.
//
// The walk covers every stream of the shard, not only those of the name
// that needs it (copyNames loops over all devices).
//
// 20,000 devices x 5 metrics (100k streams), 3 samples per stream between
// scrapes; values N(0,1) against N(20,1). Timing-dependent; the ratio is
// ~50x on the 2-core VM.
func TestReviewDScrapeWalksStreamsForZeroMeanMetrics(t *testing.T) {
	scrape := func(offset float64) time.Duration {
		s := MustNewSet(t, Options{Shards: 4})
		defer s.Stop()
		rng := rand.New(rand.NewPCG(1, 2))
		batch := new(Batch)
		ingest := func(round int) {
			batch.Reset()
			for d := range 20000 {
				batch.Add([]byte(fmt.Sprint("dev-", d)), int64(round))
				for m := range 5 {
					batch.AddMetric([]byte(fmt.Sprint("m", m)), offset+rng.NormFloat64())
				}
			}
			if err := s.Ingest(batch); err != nil {
				t.Fatal(err)
			}
		}
		for r := range 50 {
			ingest(r)
		}
		if _, err := s.MetricMeans(); err != nil {
			t.Fatal(err)
		}
		var total time.Duration
		for r := range 10 {
			for k := range 3 {
				ingest(50 + 3*r + k)
			}
			t0 := time.Now()
			if _, err := s.MetricMeans(); err != nil {
				t.Fatal(err)
			}
			total += time.Since(t0)
		}
		return total / 10
	}
	zero, twenty := scrape(0), scrape(20)
	t.Logf("mean scrape (MetricMeans) at 100k streams: values around 0: %v; values around 20: %v", zero, twenty)
	if zero > 10*twenty {
		t.Errorf("a scrape of a zero-mean fleet takes %v, %.0fx one of a fleet around 20 (%v): it walks every stream (README: O(metric names), 12.6 µs)",
			zero, float64(zero)/float64(twenty), twenty)
	}
}
