package shard

// Review tests: each demonstrates a defect in the current code and fails.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReviewMetricMeansDriftAfterSwing: the per-name sums move by the
// rounded difference m_new - m_old (namedStream.track), so a window mean
// that swings from a small value to a large one and back leaves the small
// parts behind for good. One device sends 1, 1e20 (legal: |v| <= 1e150)
// and then 3s: its window is all 3s again and its Device mean is 3, yet
// rolling_average_current stays wrong; after the device is evicted its
// residue skews the mean of the other device's stream of the same name.
func TestReviewMetricMeansDriftAfterSwing(t *testing.T) {
	st := newMemStore()
	const idle = 50 * time.Millisecond
	s := MustNewSet(t, Options{Shards: 1, Store: st, IdleEvict: idle})
	vals := []float64{1, 1e20}
	for range 60 {
		vals = append(vals, 3)
	}
	for i, v := range vals {
		ingestOne(t, s, "swing", int64(i), map[string]float64{"m": v})
		ingestOne(t, s, "steady", int64(i), map[string]float64{"m": 5})
	}
	if ms, _, _ := s.Device("swing"); ms[0].Mean != 3 || ms[0].Window != 50 {
		t.Fatalf("test premise: swing's window mean %v over %d values; want 3 over 50", ms[0].Mean, ms[0].Window)
	}
	got, err := s.MetricMeans()
	if err != nil {
		t.Fatal(err)
	}
	g := got["m"]
	t.Logf("swing (mean 3) + steady (mean 5): MetricMeans m = %.17g over %d streams; exact 4", g.Mean, g.Streams)

	// Evict swing only: collected by round 1, idle and clean at round 2,
	// while steady is written to in between.
	mustCollect(t, s, st, true)
	time.Sleep(2 * idle)
	ingestOne(t, s, "steady", 1000, map[string]float64{"m": 5})
	mustCollect(t, s, st, true)
	if s.Evicted() != 1 || s.Devices() != 1 {
		t.Fatalf("test premise: evicted %d, devices %d; want 1 and 1", s.Evicted(), s.Devices())
	}
	got2, _ := s.MetricMeans()
	g2 := got2["m"]
	t.Logf("after swing's eviction, steady (mean 5) alone: MetricMeans m = %.17g over %d streams; exact 5", g2.Mean, g2.Streams)
	if math.Abs(g.Mean-4) > 1e-12*4 || math.Abs(g2.Mean-5) > 1e-12*5 {
		t.Fatalf("rolling_average_current{metric=\"m\"}: %.17g then %.17g; want 4 then 5 (claim: exact to 1e-12 relative)", g.Mean, g2.Mean)
	}
}

// TestReviewSnapshotInfiniteZRefused: MIN_STDDEV accepts any positive
// value (main.go floatIn(SmallestNonzeroFloat64, 1e300), Params.Validate),
// and with a flat window the z of the next value is (x-mean)/MinStddev,
// which overflows to +Inf for x-mean = 1e120 at MinStddev = 1e-200. The
// stream stores LastZ = +Inf, AlertZ = +Inf and an alert with Z = +Inf; the
// encoder writes them and DecodeSnapshot refuses its own output as corrupt
// (LastZ, AlertZ and history Z are bounded by ±MaxFloat64), so the device
// restarts fresh: its whole state is lost on the next reload.
func TestReviewSnapshotInfiniteZRefused(t *testing.T) {
	st := newMemStore()
	o := Options{Shards: 1, MinStddev: 1e-200, Store: st}
	if err := o.Validate(); err != nil {
		t.Fatalf("test premise: settings invalid: %v", err)
	}
	a := MustNewSet(t, o)
	for i := range 20 {
		ingestOne(t, a, "d", int64(i), map[string]float64{"m": 0})
	}
	b := ingestOne(t, a, "d", 20, map[string]float64{"m": 1e120}) // |v| <= 1e150
	if len(b.Anomalies) != 1 {
		t.Fatalf("test premise: %d alerts", len(b.Anomalies))
	}
	t.Logf("alert z = %v", b.Anomalies[0].Z)
	snaps, err := a.Collect(false)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("collect: %d, %v", len(snaps), err)
	}
	st.save(snaps)
	if _, err := DecodeSnapshot(snaps[0].Data); err != nil {
		t.Errorf("the encoder's own snapshot is refused: %v", err)
	}
	// What the service does with it: a restart loses the device.
	b2 := MustNewSet(t, o)
	ms, ok, _ := b2.Device("d")
	if !ok || len(ms) != 1 || ms[0].Count != 21 {
		t.Errorf("after restore: found %v, state %+v; want the 21 samples back", ok, ms)
	}
}

// TestReviewReplayLosesSamplesWithRuleWindows: device.keep bounds the replay
// ring by window × streams of the metric being kept, so with rules giving
// metrics different windows the limit flips on every sample: a small-window
// metric's sample finds the ring "full" and overwrites the oldest entry,
// which belongs to the big-window metric. Here "big" (W=100) and "small"
// (W=2, a rule) arrive together in 100 samples while the store is down;
// the ring should hold about a window per metric (doc: "a ring of about one
// window per metric"), so big's 100 acknowledged values should all be
// replayed onto the stored state. About half are lost.
func TestReviewReplayLosesSamplesWithRuleWindows(t *testing.T) {
	st := newMemStore()
	small := Params{Kind: Winsor, Window: 2, MinSamples: 2, Threshold: 4, MinStddev: 1e-9, Cooldown: 50, StepFloor: 0.5}
	o := Options{Shards: 1, WindowSize: 100, Store: st, Rules: []Rule{{Match: "small", Params: small}}}
	a := MustNewSet(t, o)
	ingestOne(t, a, "d", 0, map[string]float64{"big": 0, "small": 0})
	mustCollect(t, a, st, false) // the store holds one sample

	st.setDown(true)
	b := MustNewSet(t, o)
	const n = 100
	for i := 1; i <= n; i++ {
		ingestOne(t, b, "d", int64(i), map[string]float64{"big": float64(i), "small": float64(i)})
	}
	if b.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d", b.Unrestored())
	}
	st.setDown(false)
	if _, err := b.Retry(false); err != nil {
		t.Fatal(err)
	}
	waitRestored(t, b)
	ms, _, _ := b.Device("d")
	for _, m := range ms {
		if m.Name == "big" {
			t.Logf("big after replay: count %d, window %d, mean %v", m.Count, m.Window, m.Mean)
			// stored 1 + 100 replayed; the window the last 100 (1..100).
			if m.Count != n+1 || m.Window != n || m.Mean != 50.5 {
				t.Fatalf("big after replay: count %d window %d mean %v; want %d, %d, 50.5: %d acknowledged samples lost",
					m.Count, m.Window, m.Mean, n+1, n, n+1-int(m.Count))
			}
		}
	}
}

// TestReviewStreamLimitUnboundedAcrossOutages: while a device is
// unrestored its requests are checked against its fresh state only, and the
// replay then adds every name it took to the stored ones, so each outage
// can add up to MaxStreams more names to a full device (limits.go lists
// in-flight requests, the filling request and requests parked on a load as
// the only overshoot, "fewer than MaxStreams each"). With MaxStreams 4 the
// device ends with 12 streams after two outages and keeps growing.
func TestReviewStreamLimitUnboundedAcrossOutages(t *testing.T) {
	st := newMemStore()
	const limit = 4
	s := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st, IdleEvict: time.Nanosecond})
	if err := ingestNames(s, "d", "a0", "a1", "a2", "a3"); err != nil {
		t.Fatal(err)
	}
	if err := ingestNames(s, "d", "a4"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("test premise: a fifth name: %v", err)
	}
	for round := 1; round <= 2; round++ {
		// Write d, then evict it (idle, clean at the next round).
		mustCollect(t, s, st, true)
		time.Sleep(time.Millisecond)
		mustCollect(t, s, st, true)
		if s.Devices() != 0 {
			t.Fatalf("round %d: test premise: d not evicted", round)
		}
		st.setDown(true) // an outage: d's reload fails, it serves fresh state
		for i := range limit {
			name := fmt.Sprintf("r%d-%d", round, i)
			if err := ingestNames(s, "d", name); err != nil {
				t.Fatalf("round %d: %s: %v", round, name, err)
			}
		}
		st.setDown(false)
		if _, err := s.Retry(false); err != nil {
			t.Fatal(err)
		}
		waitRestored(t, s)
		ms, _, _ := s.Device("d")
		t.Logf("after outage %d: d has %d streams (MaxStreams %d)", round, len(ms), limit)
	}
	ms, _, _ := s.Device("d")
	if len(ms) >= 2*limit {
		t.Fatalf("device has %d streams with MaxStreams=%d: the limit does not bound a device across outages", len(ms), limit)
	}
}

// TestReviewStreamLimitUnboundedAcrossEvictions: the same without any
// outage. An evicted full device is unpublished, so the request that
// reloads it is not checked and may bring up to MaxStreams new names; after
// the next eviction another request does it again. Each idle period adds
// MaxStreams streams: nothing bounds the total.
func TestReviewStreamLimitUnboundedAcrossEvictions(t *testing.T) {
	st := newMemStore()
	const limit = 4
	s := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st, IdleEvict: time.Nanosecond})
	if err := ingestNames(s, "d", "a0", "a1", "a2", "a3"); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		mustCollect(t, s, st, true)
		time.Sleep(time.Millisecond)
		mustCollect(t, s, st, true)
		if s.Devices() != 0 {
			t.Fatalf("round %d: test premise: d not evicted", round)
		}
		names := make([]string, limit)
		for i := range names {
			names[i] = fmt.Sprintf("r%d-%d", round, i)
		}
		if err := ingestNames(s, "d", names...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	ms, _, _ := s.Device("d")
	if len(ms) >= 2*limit {
		t.Fatalf("device has %d streams with MaxStreams=%d after 3 evictions: each reload admits MaxStreams more", len(ms), limit)
	}
}

// TestReviewAckAfterSealTimeout (timing margin: a 300 ms load against a
// 50 ms seal budget). main.go stopState gives Seal, reconcile, the final
// collect and the flush one 4 s budget. When Seal runs out (a sample parked
// on a slow load), stopState logs "may miss the final snapshot" and goes on:
// the final Collect runs without the parked sample, and Set.Stop then waits
// for the load, applies the sample and lets Ingest return nil - the client
// gets 200 for a sample that no snapshot holds. Nothing refuses a request
// that is still parked when the seal deadline passes.
func TestReviewAckAfterSealTimeout(t *testing.T) {
	st := newMemStore()
	s := New(Options{Shards: 1, Store: delayStore{st, map[string]time.Duration{"slow": 300 * time.Millisecond}}})
	type result struct {
		err error
		at  time.Time
	}
	res := make(chan result, 1)
	go func() {
		err := s.Ingest(batchOf([]string{"slow"}, "m", []float64{42}))
		res <- result{err, time.Now()}
	}()
	time.Sleep(20 * time.Millisecond) // the load is in flight
	// stopState, in order:
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	sealErr := s.Seal(ctx)
	final, err := s.Collect(false) // Writer.Stop's final collect
	if err != nil {
		t.Fatal(err)
	}
	finalAt := time.Now()
	st.save(final)
	s.Stop()
	r := <-res
	t.Logf("seal: %v; final snapshot: %d devices at %v; ingest answered %v at %v",
		sealErr, len(final), finalAt.Format("15:04:05.000"), r.err, r.at.Format("15:04:05.000"))
	if r.err == nil && len(final) == 0 {
		t.Fatalf("the request was acknowledged (nil error -> 200) %v after the final snapshot, which does not hold it: lost",
			r.at.Sub(finalAt).Round(time.Millisecond))
	}
}

// TestReviewMetricMeansDriftGlitches: the same drift under an ordinary
// looking load: 100 devices, noise of ±1e3 and one glitch in a hundred of
// ~1e12 (a counter wrap, an unset register), 2,000 rounds, W=5. The kept
// mean is off by 1.4e-8 relative against the 1e-12 claimed.
func TestReviewMetricMeansDriftGlitches(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 1, WindowSize: 5})
	rng := rand.New(rand.NewPCG(1, 1))
	b := new(Batch)
	for round := range 2000 {
		b.Reset()
		for d := range 100 {
			b.Add([]byte(fmt.Sprint("d", d)), int64(round))
			v := rng.NormFloat64() * 1e3
			if rng.IntN(100) == 0 {
				v = rng.NormFloat64() * 1e12
			}
			b.AddMetric([]byte("m"), v)
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	var means []float64
	for d := range 100 {
		ms, _, _ := s.Device(fmt.Sprint("d", d))
		means = append(means, ms[0].Mean)
	}
	exact, _ := exactStats(means)
	got, err := s.MetricMeans()
	if err != nil {
		t.Fatal(err)
	}
	if rel := math.Abs(got["m"].Mean-exact) / math.Abs(exact); rel > 1e-12 {
		t.Fatalf("MetricMeans m = %.17g; recomputed %.17g: relative error %.3g (claim 1e-12)", got["m"].Mean, exact, rel)
	}
}
