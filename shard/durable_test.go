package shard

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// memStore is a Store over a map, answering from its own goroutine like
// persist does over Redis; down makes it fail like an unreachable Redis.
type memStore struct {
	mu   sync.Mutex
	data map[string][]byte // guarded by mu
	down bool              // guarded by mu
}

func newMemStore() *memStore { return &memStore{data: map[string][]byte{}} }

func (m *memStore) Load(id string, done func(*Snapshot, error)) {
	go func() {
		m.mu.Lock()
		b, ok, down := m.data[id], m.data[id] != nil, m.down
		m.mu.Unlock()
		switch {
		case down:
			done(nil, errors.New("store down"))
		case !ok:
			done(nil, nil)
		default:
			s, err := DecodeSnapshot(b)
			done(s, err)
		}
	}()
}

func (m *memStore) save(snaps []Encoded) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range snaps {
		m.data[s.Device] = s.Data
	}
}

func (m *memStore) setDown(v bool) {
	m.mu.Lock()
	m.down = v
	m.mu.Unlock()
}

func ingestOne(tb testing.TB, s *Set, dev string, ts int64, vals map[string]float64) *Batch {
	tb.Helper()
	b := new(Batch)
	b.Add([]byte(dev), ts)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range vals {
			if !yield(k) {
				return
			}
		}
	}) {
		b.AddMetric([]byte(k), vals[k])
	}
	if err := s.Ingest(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustCollect(tb testing.TB, s *Set, st *memStore, evict bool) int {
	tb.Helper()
	snaps, err := s.Collect(evict)
	if err != nil {
		tb.Fatal(err)
	}
	st.save(snaps)
	return len(snaps)
}

func TestRestoreAfterRestart(t *testing.T) {
	st := newMemStore()
	o := Options{Shards: 3, WindowSize: 8, MinSamples: 3, Store: st}
	a := New(o)
	for i := range 30 {
		v := float64(i % 3)
		if i == 20 {
			v = 100
		}
		ingestOne(t, a, "dev-1", int64(i), map[string]float64{"temp": v, "hum": 5})
	}
	if n := mustCollect(t, a, st, false); n != 1 {
		t.Fatalf("unexpected snapshot count %d", n)
	}
	if n := mustCollect(t, a, st, false); n != 0 {
		t.Fatalf("clean devices were snapshotted again: %d", n)
	}
	want, _, _ := a.Device("dev-1")
	wantHist, _, _ := a.Anomalies("dev-1")
	defer a.Stop()

	b := MustNewSet(t, o)
	got, ok, err := b.Device("dev-1")
	if err != nil || !ok {
		t.Fatalf("device not restored: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("restored state differs:\ngot  %+v\nwant %+v", got, want)
	}
	if h, _, _ := b.Anomalies("dev-1"); !slices.Equal(h, wantHist) || len(h) == 0 {
		t.Fatalf("restored history differs: %v vs %v", h, wantHist)
	}
	// The restored detector goes on exactly as the original one does.
	sameFuture(t, a, b, "dev-1", 30)
	if _, ok, _ := b.Device("nobody"); ok {
		t.Fatal("unknown device found")
	}
	if b.Devices() != 1 {
		t.Fatalf("a read miss left a device behind: %d", b.Devices())
	}
}

// sameFuture feeds the same samples, spikes and all, to a device in two
// Sets and fails unless every batch reports the same alerts and the states
// end equal, bit for bit.
func sameFuture(t *testing.T, a, b *Set, dev string, from int) {
	t.Helper()
	for i := from; i < from+40; i++ {
		v := float64(i%4) * 0.7
		if i%9 == 0 {
			v = 60 + float64(i) // spikes, some inside a cooldown
		}
		ba := ingestOne(t, a, dev, int64(i), map[string]float64{"temp": v, "hum": 5 + float64(i%2)})
		bb := ingestOne(t, b, dev, int64(i), map[string]float64{"temp": v, "hum": 5 + float64(i%2)})
		if !slices.Equal(ba.Anomalies, bb.Anomalies) || ba.Anomalous != bb.Anomalous {
			t.Fatalf("sample %d: alerts differ after restore:\n%+v\n%+v", i, ba.Anomalies, bb.Anomalies)
		}
	}
	ma, _, _ := a.Device(dev)
	mb, _, _ := b.Device(dev)
	if !slices.Equal(ma, mb) || ma[0].Anomalies == 0 {
		t.Fatalf("states differ after restore (or no alerts were tested):\n%+v\n%+v", ma, mb)
	}
}

func TestRestoreKeepsEveryDetectorIdentical(t *testing.T) {
	for _, k := range []Kind{ZScore, Winsor, EWMA} {
		st := newMemStore()
		o := Options{Shards: 2, Detector: k, WindowSize: 6, MinSamples: 3, Cooldown: 5, Store: st}
		a := MustNewSet(t, o)
		for i := range 23 {
			v := float64(i % 3)
			if i == 20 {
				v = 100 // leaves the stream inside its cooldown at the snapshot
			}
			ingestOne(t, a, "d", int64(i), map[string]float64{"temp": v, "hum": 5})
		}
		mustCollect(t, a, st, false)
		b := MustNewSet(t, o)
		sameFuture(t, a, b, "d", 23)
	}
}

func TestUnrestoredReplaysOntoStoredState(t *testing.T) {
	st := newMemStore()
	o := Options{Shards: 2, WindowSize: 10, Store: st}
	a := New(o)
	for i := range 5 {
		ingestOne(t, a, "d", int64(i), map[string]float64{"m": float64(i)})
	}
	mustCollect(t, a, st, false)
	a.Stop()

	st.setDown(true)
	b := MustNewSet(t, o)
	for i := 5; i < 8; i++ {
		ingestOne(t, b, "d", int64(i), map[string]float64{"m": float64(i)})
	}
	if ms, _, _ := b.Device("d"); ms[0].Count != 3 || b.Unrestored() != 1 {
		t.Fatalf("want fresh unrestored state; got %+v, unrestored=%d", ms, b.Unrestored())
	}
	if n := mustCollect(t, b, st, false); n != 0 {
		t.Fatalf("unrestored state was handed out for writing (%d)", n)
	}
	st.setDown(false)
	mustCollect(t, b, st, false) // retries the load
	deadline := time.Now().Add(5 * time.Second)
	for b.Unrestored() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	ms, _, _ := b.Device("d")
	if ms[0].Count != 8 || ms[0].Window != 8 || ms[0].Last != 7 || ms[0].Mean != 3.5 {
		t.Fatalf("replay onto stored state failed: %+v", ms[0])
	}
	if n := mustCollect(t, b, st, false); n != 1 {
		t.Fatalf("merged state not handed out for writing (%d)", n)
	}
}

func TestIdleEviction(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st, IdleEvict: time.Nanosecond})
	ingestOne(t, s, "idle", 1, map[string]float64{"m": 4})
	mustCollect(t, s, st, false)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 || s.Evicted() != 1 || s.Streams() != 0 {
		t.Fatalf("not evicted: devices=%d evicted=%d streams=%d", s.Devices(), s.Evicted(), s.Streams())
	}
	ingestOne(t, s, "idle", 2, map[string]float64{"m": 6})
	if ms, _, _ := s.Device("idle"); ms[0].Count != 2 || ms[0].Mean != 5 {
		t.Fatalf("not reloaded: %+v", ms)
	}
}

// TestCollectInChunksLosesNothing: Collect takes many devices in chunks
// while ingest goes on; after the last Collect every device's stored
// snapshot equals its state in memory.
func TestCollectInChunksLosesNothing(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st})
	const devices = 5 * collectChunk
	ingestAll := func(round int) {
		b := new(Batch)
		for d := range devices {
			b.Add([]byte(fmt.Sprint("dev-", d)), int64(round))
			b.AddMetric([]byte("m"), float64(d+round))
		}
		if err := s.Ingest(b); err != nil {
			t.Error(err)
		}
	}
	ingestAll(0)
	if n := mustCollect(t, s, st, false); n != devices {
		t.Fatalf("first collect took %d devices; want %d, each once", n, devices)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for round := 1; round <= 20; round++ {
			ingestAll(round)
		}
	}()
	for collecting := true; collecting; {
		select {
		case <-done:
			collecting = false
		default:
		}
		mustCollect(t, s, st, false)
	}
	mustCollect(t, s, st, false) // what changed during the last one
	for d := range devices {
		id := fmt.Sprint("dev-", d)
		ms, _, err := s.Device(id)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := DecodeSnapshot(st.data[id])
		if err != nil || snap.Streams[0].Count != ms[0].Count || snap.Streams[0].Last != ms[0].Last {
			t.Fatalf("%s: stored %+v, %v; in memory count %d last %v", id, snap, err, ms[0].Count, ms[0].Last)
		}
	}
	if n := mustCollect(t, s, st, false); n != 0 {
		t.Fatalf("%d devices collected twice", n)
	}
}

// snapshot copies d's state into a Snapshot.
func (d *device) snapshot() *Snapshot {
	snap := &Snapshot{Device: d.id, Streams: make([]StreamSnapshot, len(d.streams)), History: d.oldestFirst()}
	for i := range d.streams {
		snap.Streams[i] = d.streams[i].state()
		snap.Streams[i].Values = d.streams[i].Win.Values(nil)
	}
	return snap
}

// TestEncodeMatchesSnapshot: the direct encoder Collect uses writes the
// same bytes as encoding a copied Snapshot, wrapped ring included.
func TestEncodeMatchesSnapshot(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 1, WindowSize: 4, MinSamples: 2, Cooldown: -1, Detector: EWMA})
	for i := range 11 {
		ingestOne(t, s, "d", int64(i), map[string]float64{"a": float64(i % 3), "b": float64(i * i)})
	}
	var d *device
	for _, d = range s.shards[0].devices {
	}
	if d.streams[0].Win.oldest() == 0 || len(d.history) == 0 {
		t.Fatalf("test needs a wrapped ring and a history")
	}
	if got, want := d.encode(), d.snapshot().AppendBinary(nil); string(got) != string(want) {
		t.Fatalf("encode differs from snapshot().AppendBinary():\n%x\n%x", got, want)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := &Snapshot{Device: "dev:1", Streams: []StreamSnapshot{{Name: "t", Values: []float64{1, -2.5, 1e9}, Count: 9,
		Anomalies: 2, Anomalous: 3, Last: 1e9, LastZ: 4.5, UpdatedTS: -5, EWMean: 1, EWVar: 2, Step: 3, Quiet: 7, AlertZ: 8}},
		History: []Anomaly{{Device: "dev:1", Metric: "t", TS: 3, Value: 1, Mean: 2, Stddev: 3, Z: 4}}}
	b := s.AppendBinary(nil)
	got, err := DecodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if again := got.AppendBinary(nil); string(again) != string(b) {
		t.Fatalf("round trip changed the encoding")
	}
	for _, bad := range [][]byte{nil, {2}, b[:len(b)-1], append(slices.Clone(b), 0), {1, 200, 200, 200, 200, 200, 200}} {
		if _, err := DecodeSnapshot(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%v: got %v; want ErrCorrupt", bad, err)
		}
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	s := &Snapshot{Device: "d", Streams: []StreamSnapshot{{Name: "t", Values: []float64{1, 2}}}}
	f.Add(s.AppendBinary(nil))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeSnapshot(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// Varints may be written non-minimally, so compare what the bytes
		// mean: a decoded snapshot must survive encode and decode unchanged.
		again := got.AppendBinary(nil)
		got2, err := DecodeSnapshot(again)
		if err != nil {
			t.Fatalf("re-encoding of %x rejected: %v", b, err)
		}
		if again2 := got2.AppendBinary(nil); string(again2) != string(again) {
			t.Fatalf("round trip of %x changed it", b)
		}
	})
}

// delayStore delays the loads of some devices, as a slow Redis round trip
// would for one pipeline and not another.
type delayStore struct {
	*memStore
	slow map[string]time.Duration
}

func (d delayStore) Load(id string, done func(*Snapshot, error)) {
	if w := d.slow[id]; w > 0 {
		d.memStore.Load(id, func(s *Snapshot, err error) {
			time.Sleep(w)
			done(s, err)
		})
		return
	}
	d.memStore.Load(id, done)
}

// TestAnomaliesInSampleOrderAfterLoad: a device whose load is slow has its
// samples applied after those of a later device in the same shard; the
// response must still list anomalies in sample order (the merge skipped the
// sort when only one shard raised alerts).
func TestAnomaliesInSampleOrderAfterLoad(t *testing.T) {
	st := newMemStore()
	o := Options{Shards: 1, Detector: ZScore, ZThreshold: 3, Cooldown: -1, MinSamples: 3, WindowSize: 8, Store: st}
	a := MustNewSet(t, o)
	for i := range 8 {
		ingestOne(t, a, "slow", int64(i), map[string]float64{"m": float64(i % 2)})
		ingestOne(t, a, "fast", int64(i), map[string]float64{"m": float64(i % 2)})
	}
	if n := mustCollect(t, a, st, false); n != 2 {
		t.Fatalf("collected %d devices; want 2", n)
	}
	o.Store = delayStore{st, map[string]time.Duration{"slow": 50 * time.Millisecond}}
	b := MustNewSet(t, o)
	batch := batchOf([]string{"slow", "fast"}, "m", []float64{100, 100})
	if err := b.Ingest(batch); err != nil {
		t.Fatal(err)
	}
	if len(batch.Anomalies) != 2 || batch.Anomalies[0].Device != "slow" || batch.Anomalies[1].Device != "fast" {
		t.Fatalf("anomalies not in sample order; got %+v; want slow then fast", batch.Anomalies)
	}
}

// waitRestored waits until no device of s is unrestored.
func waitRestored(tb testing.TB, s *Set) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Unrestored() != 0 {
		if time.Now().After(deadline) {
			tb.Fatalf("%d devices still unrestored", s.Unrestored())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReplayInOrderAfterWrap: kept samples replay in arrival order even
// when a new metric grows the ring after it wrapped (with W=2: m=1,2,3
// wraps, then n=100, m=4; stream m ended on 3 at ts 3 instead of 4 at 5).
func TestReplayInOrderAfterWrap(t *testing.T) {
	st := newMemStore()
	o := Options{Shards: 1, WindowSize: 2, Store: st}
	a := MustNewSet(t, o)
	ingestOne(t, a, "d", 0, map[string]float64{"m": 0})
	mustCollect(t, a, st, false)

	st.setDown(true)
	b := MustNewSet(t, o)
	for i, v := range []float64{1, 2, 3} {
		ingestOne(t, b, "d", int64(i+1), map[string]float64{"m": v})
	}
	ingestOne(t, b, "d", 4, map[string]float64{"n": 100})
	ingestOne(t, b, "d", 5, map[string]float64{"m": 4})
	st.setDown(false)
	mustCollect(t, b, st, false) // retries the load: replay onto the stored state
	waitRestored(t, b)
	ms, _, _ := b.Device("d")
	got := map[string]MetricState{}
	for _, m := range ms {
		got[m.Name] = m
	}
	if m := got["m"]; m.Last != 4 || m.UpdatedTS != 5 || m.Mean != 3.5 {
		t.Fatalf("stream m after replay: last %v at ts %d, mean %v; want 4 at 5, mean 3.5", m.Last, m.UpdatedTS, m.Mean)
	}
	if n := got["n"]; n.Last != 100 || n.UpdatedTS != 4 {
		t.Fatalf("stream n after replay: %+v", n)
	}
}
