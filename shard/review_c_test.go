package shard

// Failing tests from the third hostile review (review-c) of the fixes for
// the first two reviews. Each comment says what is claimed, what happens,
// and why. Run: go test ./shard -run 'ReviewC' -count=1 -v

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"

	"ai-load-service/shard/detect"
)

// gateStore records every Load and lets the test answer each one, in any
// order and at any time, as Redis answers pipelines out of a caller's
// control (a first load stuck behind a paused Redis, a retry on another
// loader).
type gateStore struct {
	mu    sync.Mutex
	calls []gateCall
	next  chan struct{} // one token per Load
}

type gateCall struct {
	id   string
	done func(*Snapshot, error)
}

func newGateStore() *gateStore { return &gateStore{next: make(chan struct{}, 1024)} }

func (g *gateStore) Load(id string, done func(*Snapshot, error)) {
	g.mu.Lock()
	g.calls = append(g.calls, gateCall{id, done})
	g.mu.Unlock()
	g.next <- struct{}{}
}

// wait returns the i-th Load (0-based) once it was made.
func (g *gateStore) wait(tb testing.TB, i int) gateCall {
	tb.Helper()
	deadline := time.After(5 * time.Second)
	for {
		g.mu.Lock()
		if len(g.calls) > i {
			c := g.calls[i]
			g.mu.Unlock()
			return c
		}
		g.mu.Unlock()
		select {
		case <-g.next:
		case <-deadline:
			tb.Fatalf("load %d never made", i)
		}
	}
}

// TestReviewCLateAbandonedAnswerDiscardsRetry: "late load answers [of
// abandoned loads] are ignored" (durable.go abandon). They are not when the
// device is being retried by then: onLoaded (durable.go:121) only checks
// that the device is loading *or retrying*, not that the answer is the
// retry's, so the abandoned first load's late answer settles the retry.
// When that late answer is a failure (the GET that was stuck behind a
// paused Redis times out) and the retry itself succeeds, the retry's
// success arrives to a device no longer retrying and is dropped: the
// device stays unrestored although the store answered. In Writer.Stop this
// burns a reconcile cycle (another Retry after a 100 ms sleep), and at the
// reconcile deadline the device is reported unreconciled and its
// acknowledged samples are lost, with Redis healthy.
func TestReviewCLateAbandonedAnswerDiscardsRetry(t *testing.T) {
	g := newGateStore()
	s := New(Options{Shards: 1, Store: g})
	defer s.Stop() // every load is answered below, so the shard can end

	acked := make(chan error, 1)
	go func() { acked <- s.Ingest(batchOf([]string{"d"}, "m", []float64{42})) }()
	first := g.wait(t, 0) // the first load, stuck (Redis paused)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Seal(ctx); err == nil {
		t.Fatal("test premise: Seal did not abandon the load")
	}
	if err := <-acked; err != nil {
		t.Fatalf("test premise: ingest %v", err)
	}
	if s.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d", s.Unrestored())
	}
	// Writer.Stop's reconcile: retry every unrestored device.
	if n, err := s.Retry(true); err != nil || n != 1 {
		t.Fatalf("test premise: retry started %d, %v", n, err)
	}
	retry := g.wait(t, 1)
	// The abandoned GET times out now (its Redis call deadline)...
	first.done(nil, errors.New("context deadline exceeded"))
	time.Sleep(50 * time.Millisecond) // let the shard take that answer first
	// ...and the retry's GET is answered: Redis holds nothing for d, so the
	// fresh state (with the acknowledged 42) is the state.
	retry.done(nil, nil)
	deadline := time.Now().Add(2 * time.Second)
	for s.Retrying() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	final, err := s.Collect(false)
	t.Logf("after the retry was answered successfully: unrestored %d, retrying %d, final collect %d devices (%v)",
		s.Unrestored(), s.Retrying(), len(final), err)
	if s.Unrestored() != 0 || len(final) != 1 {
		t.Fatalf("the retry's successful answer was dropped: the abandoned load's late failure settled the retry " +
			"(onLoaded does not tell a first load's answer from a retry's); the device stays unrestored and " +
			"its acknowledged sample is not in the final snapshot")
	}
}

// TestReviewCExpiredKeyKeepsStaleStreamLimit: the published names of a
// full device are kept while it is out of memory and "replaced or dropped
// by the device's next successful load" (limits.go). But Ingest checks a
// request against them before anything reaches the shard (shard.go:375,
// limits.go:110), so a request naming only new metrics never causes that
// load: once the device's key expired (SNAPSHOT_TTL) or was found corrupt,
// the device holds nothing, yet every request with a new name gets 429,
// for as long as the process runs. Only a request with an old name (or a
// GET of the device) would load it and clear the stale set.
func TestReviewCExpiredKeyKeepsStaleStreamLimit(t *testing.T) {
	st := newMemStore()
	const limit = 4
	s := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st, IdleEvict: time.Nanosecond})
	if err := ingestNames(s, "d", "a0", "a1", "a2", "a3"); err != nil {
		t.Fatal(err)
	}
	mustCollect(t, s, st, true)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatal("test premise: d not evicted")
	}
	// d's key expires: the store holds nothing for it any more.
	st.mu.Lock()
	delete(st.data, "d")
	st.mu.Unlock()
	// d comes back (new firmware, new metric names). It holds no stream.
	refused := 0
	var last error
	for i := range 20 {
		if err := ingestNames(s, "d", fmt.Sprint("b", i%limit)); err != nil {
			refused++
			last = err
		}
	}
	t.Logf("%d of 20 requests for a device that holds nothing refused; last: %v", refused, last)
	// A read loads d, and the stale set goes.
	if _, _, err := s.Device("d"); err != nil {
		t.Fatal(err)
	}
	after := ingestNames(s, "d", "b0")
	t.Logf("after a GET of the device loaded it: %v", after)
	if refused > 0 {
		t.Fatalf("a device whose key expired is refused new names by the published set of state it no longer has "+
			"(%d of 20 requests got ErrTooManyStreams; nothing but a read or an old name ever clears it)", refused)
	}
}

// TestReviewCFullSetsOutliveEvictionUnbounded: the published names of a
// full device were kept after its eviction with no bound: memory grew with
// every device that ever reached the limit (2,000 sets of ~17 KB each after
// every device left and its key expired). Away sets are now capped per
// shard (maxAway, oldest dropped) and hold name hashes (8 bytes a name).
func TestReviewCFullSetsOutliveEvictionUnbounded(t *testing.T) {
	st := newMemStore()
	const limit, devices = 4, maxAway + 500
	s := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st, IdleEvict: time.Nanosecond})
	b := new(Batch)
	for d := range devices {
		b.Reset()
		b.Add([]byte(fmt.Sprint("dev-", d)), 0)
		for m := range limit {
			b.AddMetric([]byte(fmt.Sprint("metric-name-", m)), 1)
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	mustCollect(t, s, st, true)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatalf("test premise: %d devices still held", s.Devices())
	}
	sh := s.shards[0]
	if n := s.nfull.Load(); n != maxAway || len(sh.full.m) != maxAway {
		t.Fatalf("%d published sets (%d entries) after %d full devices left; want the cap, %d", n, len(sh.full.m), devices, maxAway)
	}
	for _, f := range sh.full.m {
		if !f.away || len(f.names) != limit {
			t.Fatalf("set %+v; want an away set of %d name hashes", f, limit)
		}
	}
	// A device whose set stayed cannot add a name as it is reloaded.
	var kept string
	for _, f := range sh.full.m {
		kept = f.id
	}
	if err := ingestNames(s, kept, "new"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("away device %s: %v; want ErrTooManyStreams", kept, err)
	}
}

// TestReviewCReplayRingDwarfsWindows: docs/persistence.md and the README
// say an unrestored device keeps "a ring of about one window per metric".
// keep (durable.go:95) bounds it by the *largest* window times the
// streams: with one rule giving one metric W=10000 and twenty metrics at
// the default W=50, the ring holds 21 × 10000 samples of 32 bytes, 19
// times the values its windows hold and 76 times their bytes (6.7 MB for
// a device whose windows take 88 KB). An outage makes every such device
// take that, and the README's memory rule of thumb has no term for it.
func TestReviewCReplayRingDwarfsWindows(t *testing.T) {
	st := newMemStore()
	big := detect.Params{Kind: detect.Winsor, Window: 10000, MinSamples: 10, Threshold: 4, MinStddev: 1e-9, Cooldown: 50, StepFloor: 0.5}
	o := Options{Shards: 1, WindowSize: 50, Store: st, Rules: []detect.Rule{{Match: "big", Params: big}}}
	st.setDown(true) // an outage: the device is unrestored
	s := MustNewSet(t, o)
	b := new(Batch)
	for i := range 10000 {
		b.Reset()
		b.Add([]byte("d"), int64(i))
		b.AddMetric([]byte("big"), float64(i))
		for m := range 20 {
			b.AddMetric([]byte(fmt.Sprint("s", m)), float64(i))
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	if s.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d", s.Unrestored())
	}
	// The shard is idle (Ingest returned): read its state.
	var d *device
	for _, first := range s.shards[0].devices {
		d = first
	}
	values := 0
	for i := range d.streams {
		values += d.streams[i].Win.Len()
	}
	ringBytes := len(d.replay) * int(unsafe.Sizeof(kept{}))
	t.Logf("windows hold %d values (%d KB); replay ring %d samples (%d KB): %.0fx the values, %.0fx the bytes",
		values, values*8>>10, len(d.replay), ringBytes>>10, float64(len(d.replay))/float64(values), float64(ringBytes)/float64(values*8))
	if len(d.replay) > 2*values {
		t.Fatalf("replay ring of %d samples for windows of %d values: not \"about one window per metric\"", len(d.replay), values)
	}
}

// TestReviewCScrapeWalksOnZeroCenteredMetric: README: rolling_average_current
// is "kept as samples arrive: a scrape costs O(metric names)". copyNames
// (shard.go:912) walks every stream of a shard whenever one name's sum is
// not exact(): 2^-52·mag > 1e-13·|sum|. mag grows by |Δmean| with every
// value, while the sum of a metric centred on zero (accelerometer axes,
// signed currents, temperatures near 0 °C) stays near zero by cancellation,
// so for an ordinary fleet such a name fails exact() again after every
// scrape interval, and the scrape walks every stream of every shard:
// all metrics, not just that name. 20k devices × 5 metrics (one of them
// zero-centred noise), 4 shards, one sample per device per second, a
// scrape every 15 s.
func TestReviewCScrapeWalksOnZeroCenteredMetric(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 4})
	rng := rand.New(rand.NewPCG(7, 7))
	b := new(Batch)
	ids := make([][]byte, 2000) // (the review ran 20,000: the walks do not depend on it)
	for d := range ids {
		ids[d] = []byte(fmt.Sprint("dev-", d))
	}
	second := func(ts int) {
		b.Reset()
		for d := range ids {
			b.Add(ids[d], int64(ts))
			b.AddMetric([]byte("temp"), 21+rng.NormFloat64())
			b.AddMetric([]byte("hum"), 45+5*rng.NormFloat64())
			b.AddMetric([]byte("volt"), 3.7+0.05*rng.NormFloat64())
			b.AddMetric([]byte("rssi"), -70+3*rng.NormFloat64())
			b.AddMetric([]byte("accel_x"), 0.02*rng.NormFloat64()) // at rest: noise around 0
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	ts := 0
	for ; ts < 50; ts++ { // fill the windows
		second(ts)
	}
	if _, err := s.MetricMeans(); err != nil {
		t.Fatal(err)
	}
	// The shards are idle after Ingest or MetricMeans returns: count the
	// names a scrape would recompute, then scrape.
	inexact := func() (names, shards int) {
		for _, sh := range s.shards {
			n := 0
			for _, a := range sh.names {
				if !a.exact() {
					n++
				}
			}
			names += n
			if n > 0 {
				shards++
			}
		}
		return
	}
	const scrapes = 8
	walks := 0
	var walked, cheap time.Duration
	for range scrapes {
		for range 15 {
			second(ts)
			ts++
		}
		_, sh := inexact()
		t0 := time.Now()
		if _, err := s.MetricMeans(); err != nil {
			t.Fatal(err)
		}
		el := time.Since(t0)
		if sh > 0 {
			walks++
			walked = max(walked, el)
		}
		// The same scrape again, nothing changed: the O(names) cost.
		t1 := time.Now()
		if _, err := s.MetricMeans(); err != nil {
			t.Fatal(err)
		}
		cheap = max(cheap, time.Since(t1))
		t.Logf("scrape: %d of 4 shards walk their streams; took %v (a scrape without a walk: %v)", sh, el, time.Since(t1))
	}
	t.Logf("%d of %d scrapes walked; slowest walking scrape %v, slowest plain one %v", walks, scrapes, walked, cheap)
	if walks > scrapes/4 {
		t.Fatalf("%d of %d scrapes walked every stream of a shard because of one zero-centred metric: a scrape is not O(names) for ordinary data", walks, scrapes)
	}
}

// guard against an unused import when tests are trimmed
var _ = math.Abs

// TestReviewCLoweredLimitRefusesHeldNames: README: "Lowering the limit
// keeps the streams a device already has", and the published set of such a
// device holds all its names so that none of them is blocked. But checkWide
// (limits.go:136-167) runs first and counts a request's names against the
// limit without looking at what the device holds: a device restored with
// 50 streams under MAX_STREAMS_PER_DEVICE=10 gets 429 for its usual
// request (its 50 metrics in one sample), every time. It can only feed
// the streams it "keeps" by splitting its payload into requests of 10.
func TestReviewCLoweredLimitRefusesHeldNames(t *testing.T) {
	st, names := savedWide(t, 50)
	b := MustNewSet(t, Options{Shards: 1, MaxStreams: 10, Store: st})
	if err := ingestNames(b, "d", "m7"); err != nil { // loads d: 50 streams, all published
		t.Fatalf("test premise: %v", err)
	}
	if ms, _, _ := b.Device("d"); len(ms) != 50 {
		t.Fatalf("test premise: restored %d streams", len(ms))
	}
	err := ingestNames(b, "d", names...)
	t.Logf("the device's usual request, naming only the 50 metrics it holds: %v", err)
	if err != nil {
		t.Fatalf("a device that keeps 50 streams over a lowered limit of 10 is refused its usual request naming only them: %v", err)
	}
}
