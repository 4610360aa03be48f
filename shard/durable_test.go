package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"ai-load-service/shard/detect"
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
	for _, k := range []detect.Kind{detect.ZScore, detect.Winsor, detect.EWMA, detect.Ranges} {
		st := newMemStore()
		o := Options{Shards: 2, Detector: k, WindowSize: 6, MinSamples: 3, Cooldown: 5, Store: st}
		a := MustNewSet(t, o)
		n := 23
		if k == detect.Ranges {
			n += 150 // past its warm-up, so that the future holds alerts
		}
		for i := range n {
			v := float64(i % 3)
			if i == n-3 {
				v = 100 // leaves the stream inside its cooldown at the snapshot
			}
			ingestOne(t, a, "d", int64(i), map[string]float64{"temp": v, "hum": 5})
		}
		mustCollect(t, a, st, false)
		b := MustNewSet(t, o)
		sameFuture(t, a, b, "d", n)
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
	if n, err := b.Retry(false); n != 1 || err != nil {
		t.Fatalf("Retry started %d loads (%v); want 1", n, err)
	}
	waitRestored(t, b)
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
	snap := &Snapshot{Device: d.id, Gen: d.gen, Streams: make([]StreamSnapshot, len(d.streams)), History: d.oldestFirst()}
	for i := range d.streams {
		snap.Streams[i] = d.streams[i].state()
		snap.Streams[i].Values = d.streams[i].Win.Values(nil)
	}
	return snap
}

// TestEncodeMatchesSnapshot: the direct encoder Collect uses writes the
// same bytes as encoding a copied Snapshot, wrapped ring included.
func TestEncodeMatchesSnapshot(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 1, WindowSize: 4, MinSamples: 2, Cooldown: -1, Detector: detect.EWMA, HistoryLen: 3})
	for i := range 11 {
		ingestOne(t, s, "d", int64(i), map[string]float64{"a": float64(i % 3), "b": float64(i * i)})
	}
	for i := range 6 { // spikes, so the history of 3 wraps
		ingestOne(t, s, "d", int64(11+i), map[string]float64{"a": 1e6 * float64(i%2*2-1), "b": 1})
	}
	var d *device
	for _, d = range s.shards[0].devices {
	}
	if _, newer := d.streams[0].Win.Ring(); len(newer) == 0 || len(d.history) != 3 || d.hnext == 0 {
		t.Fatalf("test needs a wrapped window and a wrapped history (%d alerts, next slot %d)", len(d.history), d.hnext)
	}
	if got, want := d.encode(), d.snapshot().AppendBinary(nil); string(got) != string(want) {
		t.Fatalf("encode differs from snapshot().AppendBinary():\n%x\n%x", got, want)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := &Snapshot{Device: "dev:1", Streams: []StreamSnapshot{{Name: "t", Values: []float64{1, -2.5, 1e9}, Count: 9,
		Anomalies: 2, Anomalous: 3, Last: 1e9, LastZ: 4.5, UpdatedTS: -5, EWMean: 1, EWVar: 2, Step: 3, Quiet: 7, AlertZ: 8, CoolUntil: -12345}},
		History: []Anomaly{{Device: "dev:1", Metric: "t", TS: 3, Value: 1, Mean: 2, Stddev: 3, Z: 4, Reason: detect.ReasonMean}}}
	b := s.AppendBinary(nil)
	got, err := DecodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if again := got.AppendBinary(nil); string(again) != string(b) {
		t.Fatalf("round trip changed the encoding")
	}
	if !reflect.DeepEqual(got.History, s.History) {
		t.Fatalf("history %+v, want %+v", got.History, s.History)
	}
	// An unknown reason is corrupt.
	if _, err := DecodeSnapshot(append(slices.Clone(b[:len(b)-1]), 200)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("reason 200: %v, want ErrCorrupt", err)
	}
	// Version 3: the same bytes without the alerts' reasons (and with the
	// first Ranges encoding, tested in detect) still decode.
	s3 := *s
	s3.Streams = slices.Clone(s.Streams)
	s3.Streams[0].CoolUntil, s3.History = 0, nil
	v3 := s3.AppendBinary(nil)
	v3 = append(v3[:len(v3)-2], 1, 1, 't', 3) // no CoolUntil; one alert, ts -2 (zigzag 3)...
	for _, f := range []float64{1, 2, 3, 4} {
		v3 = binary.LittleEndian.AppendUint64(v3, math.Float64bits(f)) // ...and no reason
	}
	v3[0] = 3
	if got, err := DecodeSnapshot(v3); err != nil || len(got.History) != 1 || got.History[0].Reason != detect.ReasonNone || got.History[0].Z != 4 || got.History[0].TS != -2 {
		t.Fatalf("version 3: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2}, {200, 1, 'd'}, []byte("garbage"), b[:len(b)-1], append(slices.Clone(b), 0), {1, 200, 200, 200, 200, 200, 200}} {
		if _, err := DecodeSnapshot(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%v: got %v; want ErrCorrupt", bad, err)
		}
	}
	// A newer version: its version byte and device ID, then what this one
	// cannot read.
	if s, err := DecodeSnapshot(append([]byte{snapshotVersion + 1}, "aisv\x05dev:1\xff"...)); !errors.Is(err, ErrNewerVersion) || s.Device != "dev:1" {
		t.Fatalf("newer version: %+v, %v; want ErrNewerVersion with the device", s, err)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	s := &Snapshot{Device: "d", Streams: []StreamSnapshot{{Name: "t", Values: []float64{1, 2}}}}
	f.Add(s.AppendBinary(nil))
	f.Add([]byte{1})
	for _, snap := range extremeSnapshots(f) {
		f.Add(snap)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeSnapshot(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNewerVersion) {
				t.Fatalf("error wraps neither ErrCorrupt nor ErrNewerVersion: %v", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes: the decoder
		// refuses every form the encoder does not write. An older
		// version's snapshot re-encodes as the current version, which
		// decodes to the same state.
		again := got.AppendBinary(nil)
		if b[0] == snapshotVersion && string(again) != string(b) {
			t.Fatalf("round trip of %x gave %x", b, again)
		}
		if back, err := DecodeSnapshot(again); err != nil || !reflect.DeepEqual(back, got) {
			t.Fatalf("re-encoding of %x (%x) decodes to %+v, %v; want %+v", b, again, back, err, got)
		}
		checkFinite(t, got)
	})
}

// checkFinite restores every stream of snap under each detector, at its
// own window size and at the smallest, and checks that the statistics and
// the scores of new values at the edges of the allowed range are finite.
func checkFinite(t *testing.T, snap *Snapshot) {
	t.Helper()
	for i := range snap.Streams {
		ss := &snap.Streams[i]
		for _, w := range []int{2, max(2, len(ss.Values))} {
			for _, k := range []detect.Kind{detect.ZScore, detect.Winsor, detect.EWMA, detect.Ranges} {
				p := detect.Params{Kind: k, Window: w, MinSamples: 1, Threshold: 3, MinStddev: 1e-9, Cooldown: 5, StepFloor: 0.5}
				st := detect.NewStream(w)
				loadStream(&st, ss)
				for j, x := range []float64{0, MaxValue, -MaxValue, 1, MaxValue} {
					sc := st.Observe(x, 0, &p)
					mean, sd := st.Win.Stats()
					ds := st.State()
					for _, f := range []float64{sc.Z, sc.Mean, sc.Stddev, mean, sd, ds.EWMean, ds.EWVar, ds.Step} {
						if math.IsNaN(f) || math.IsInf(f, 0) {
							t.Fatalf("stream %q, %v, W=%d, value %d: non-finite statistic in %+v (window mean %v sd %v)",
								ss.Name, k, w, j, sc, mean, sd)
						}
					}
				}
			}
		}
	}
}

// extremeSnapshots encodes devices fed the extremes valid input allows:
// values at ±MaxValue, constants far from zero, tiny noise on a huge
// offset, under every detector.
func extremeSnapshots(tb testing.TB) [][]byte {
	var out [][]byte
	for _, k := range []detect.Kind{detect.ZScore, detect.Winsor, detect.EWMA, detect.Ranges} {
		s := New(Options{Shards: 1, Detector: k, WindowSize: 5, MinSamples: 2, ZThreshold: 3})
		for i := range 40 {
			x := MaxValue
			if i%3 == 0 {
				x = -MaxValue
			}
			ingestOne(tb, s, "d", int64(i), map[string]float64{
				"edge": x, "const": 1e9, "tiny": 1e9 + float64(i%2)*1e-6, "zero": 0, "step": float64(i / 10),
			})
		}
		for _, first := range s.shards[0].devices {
			out = append(out, first.encode())
		}
		s.Stop()
	}
	return out
}

// TestExtremeSnapshotsDecode: state valid input can produce is never taken
// for corrupt (a device would start fresh and lose its history).
func TestExtremeSnapshotsDecode(t *testing.T) {
	for _, b := range extremeSnapshots(t) {
		snap, err := DecodeSnapshot(b)
		if err != nil {
			t.Fatalf("valid state refused: %v", err)
		}
		checkFinite(t, snap)
	}
}

// TestSnapshotRejectsNonFinite: a NaN, an infinity or an out-of-range value
// in any scalar of a stream or alert is corrupt (Step=NaN decoded, and the
// restored stream never alerted again), and so is a varint longer than it
// needs to be.
func TestSnapshotRejectsNonFinite(t *testing.T) {
	base := func() *Snapshot {
		return &Snapshot{Device: "d", Streams: []StreamSnapshot{{Name: "t", Values: []float64{1, 2, 3}, Count: 3, Last: 3,
			EWMean: 2, EWVar: 1, Step: 1, Sums: detect.WindowSums{Ref: 2, S1: 0, S2: 2, Mag1: 2, Mag2: 2}}},
			History: []Anomaly{{Device: "d", Metric: "t", TS: 1, Value: 3, Mean: 2, Stddev: 1, Z: 1}}}
	}
	if _, err := DecodeSnapshot(base().AppendBinary(nil)); err != nil {
		t.Fatalf("base snapshot refused: %v", err)
	}
	fields := map[string]func(s *Snapshot, v float64){
		"last": func(s *Snapshot, v float64) { s.Streams[0].Last = v }, "last_z": func(s *Snapshot, v float64) { s.Streams[0].LastZ = v },
		"ew_mean": func(s *Snapshot, v float64) { s.Streams[0].EWMean = v }, "ew_var": func(s *Snapshot, v float64) { s.Streams[0].EWVar = v },
		"step": func(s *Snapshot, v float64) { s.Streams[0].Step = v }, "alert_z": func(s *Snapshot, v float64) { s.Streams[0].AlertZ = v },
		"ref": func(s *Snapshot, v float64) { s.Streams[0].Sums.Ref = v }, "s1": func(s *Snapshot, v float64) { s.Streams[0].Sums.S1 = v },
		"s2": func(s *Snapshot, v float64) { s.Streams[0].Sums.S2 = v }, "mag1": func(s *Snapshot, v float64) { s.Streams[0].Sums.Mag1 = v },
		"mag2": func(s *Snapshot, v float64) { s.Streams[0].Sums.Mag2 = v }, "value": func(s *Snapshot, v float64) { s.Streams[0].Values[1] = v },
		"alert_value": func(s *Snapshot, v float64) { s.History[0].Value = v }, "alert_mean": func(s *Snapshot, v float64) { s.History[0].Mean = v },
		"alert_stddev": func(s *Snapshot, v float64) { s.History[0].Stddev = v }, "alert_z2": func(s *Snapshot, v float64) { s.History[0].Z = v },
	}
	for name, set := range fields {
		for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			s := base()
			set(s, v)
			if _, err := DecodeSnapshot(s.AppendBinary(nil)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s=%v: got %v; want ErrCorrupt", name, v, err)
			}
		}
	}
	for name, v := range map[string]float64{"value": 1e200, "step": -1, "ew_var": -1, "s1": 1e160, "last": -1e300} {
		s := base()
		fields[name](s, v)
		if _, err := DecodeSnapshot(s.AppendBinary(nil)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s=%v: got %v; want ErrCorrupt", name, v, err)
		}
	}
	// Count 3 written in two bytes instead of one.
	b := base().AppendBinary(nil)
	i := 1 + 4 + 1 + len("d") + 8 + 1 + 1 + len("t") // version, magic, device, gen, streams, name
	if b[i] != 3 {
		t.Fatalf("test lost its place: byte %d is %d", i, b[i])
	}
	long := append(append(slices.Clone(b[:i]), 0x83, 0x00), b[i+1:]...)
	if _, err := DecodeSnapshot(long); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("non-minimal varint: got %v; want ErrCorrupt", err)
	}
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
	o := Options{Shards: 1, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1, MinSamples: 3, WindowSize: 8, Store: st}
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
	if _, err := b.Retry(false); err != nil { // replay onto the stored state
		t.Fatal(err)
	}
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

// TestEvictionSparesActiveDevices: a device sending every few milliseconds
// is never evicted with IdleEvict equal to the snapshot interval (its touch
// time only moved when a Collect began, so it looked idle for a whole
// interval: 4 evictions in 10 s at IDLE_EVICT=1s, SNAPSHOT_INTERVAL=1s).
func TestEvictionSparesActiveDevices(t *testing.T) {
	st := newMemStore()
	const every = 40 * time.Millisecond
	s := MustNewSet(t, Options{Shards: 2, Store: st, IdleEvict: every})
	done := make(chan struct{})
	sent := 0
	go func() {
		defer close(done)
		for end := time.Now().Add(25 * every); time.Now().Before(end); sent++ {
			ingestOne(t, s, "a", int64(sent), map[string]float64{"m": float64(sent % 7)})
			time.Sleep(2 * time.Millisecond)
		}
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-tick.C:
			mustCollect(t, s, st, true)
		}
	}
	ms, ok, _ := s.Device("a")
	if n := s.Evicted(); n != 0 || !ok || ms[0].Count != uint64(sent) {
		t.Fatalf("evicted %d times, count %v of %d sent; want no eviction", n, ms, sent)
	}
	time.Sleep(2 * every)
	mustCollect(t, s, st, true)
	mustCollect(t, s, st, true)
	if n := s.Evicted(); n != 1 {
		t.Fatalf("idle device evicted %d times; want 1", n)
	}
}

// TestEvictedDeviceNeverReloadsStale: a device changed since the last
// Collect is not evicted by the Collect that copies it; its copy reaches the
// persister only when Collect returns, and a request in between reloaded
// the older state from the store (a window fell from 1176 values to 1).
func TestEvictedDeviceNeverReloadsStale(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 1, Store: st, IdleEvict: time.Nanosecond, WindowSize: 100})
	for i := range 5 {
		ingestOne(t, s, "d", int64(i), map[string]float64{"m": float64(i)})
	}
	mustCollect(t, s, st, false) // the store holds 5 values
	for i := 5; i < 8; i++ {
		ingestOne(t, s, "d", int64(i), map[string]float64{"m": float64(i)})
	}
	time.Sleep(time.Millisecond)
	snaps, err := s.Collect(true) // copies the 8 values; not yet saved
	if err != nil || len(snaps) != 1 {
		t.Fatalf("collect: %d snapshots, %v", len(snaps), err)
	}
	ingestOne(t, s, "d", 8, map[string]float64{"m": 8}) // before the persister has the copy
	st.save(snaps)
	if ms, _, _ := s.Device("d"); ms[0].Count != 9 || ms[0].Window != 9 {
		t.Fatalf("after a request in the gap: count %d window %d; want 9 and 9", ms[0].Count, ms[0].Window)
	}
	// Clean now and idle: the next Collect evicts it, and a reload sees all.
	mustCollect(t, s, st, true)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Evicted() != 1 {
		t.Fatalf("evicted %d; want 1", s.Evicted())
	}
	if ms, _, _ := s.Device("d"); ms[0].Count != 9 {
		t.Fatalf("reloaded count %d; want 9", ms[0].Count)
	}
}

// TestSealWaitsForParkedSamples: a request whose device is still loading
// when Seal is called is applied before Seal returns, and a request after
// it is refused: nothing acknowledged can miss a final Collect.
func TestSealWaitsForParkedSamples(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 1, Store: delayStore{st, map[string]time.Duration{"slow": 100 * time.Millisecond}}})
	errc := make(chan error, 1)
	go func() {
		b := batchOf([]string{"slow"}, "m", []float64{1})
		errc <- s.Ingest(b)
	}()
	time.Sleep(20 * time.Millisecond) // the load is in flight
	if err := s.Seal(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("admitted request: %v", err)
		}
	default:
		t.Fatal("Seal returned before the admitted request was applied")
	}
	snaps, err := s.Collect(false)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("final collect: %d snapshots, %v; want the parked sample's device", len(snaps), err)
	}
	if err := s.Ingest(batchOf([]string{"late"}, "m", []float64{1})); !errors.Is(err, ErrStopped) {
		t.Fatalf("after Seal: %v; want ErrStopped", err)
	}
	if _, _, err := s.Device("slow"); !errors.Is(err, ErrStopped) {
		t.Fatalf("read after Seal: %v; want ErrStopped", err)
	}
}

// TestDroppedUnrestoredUncounted: a read of an unknown device while the
// store is down leaves an empty unrestored device, which the next Collect
// drops; devices_unrestored must count it no more (it stayed at 1).
func TestDroppedUnrestoredUncounted(t *testing.T) {
	st := newMemStore()
	st.setDown(true)
	s := MustNewSet(t, Options{Shards: 1, Store: st})
	if _, ok, err := s.Device("ghost"); ok || err != nil {
		t.Fatalf("unknown device: found %v, %v", ok, err)
	}
	if s.Unrestored() != 1 {
		t.Fatalf("unrestored %d; want 1 while its load has failed", s.Unrestored())
	}
	mustCollect(t, s, st, false)
	if s.Unrestored() != 0 || s.Devices() != 0 {
		t.Fatalf("after the drop: unrestored %d, devices %d; want 0, 0", s.Unrestored(), s.Devices())
	}
}

// oldestFirst returns a copy of the history, oldest first: the reference
// the encoder's walk of the ring is checked against.
func (d *device) oldestFirst() []Anomaly {
	h := d.recent()
	for i, j := 0, len(h)-1; i < j; i, j = i+1, j-1 {
		h[i], h[j] = h[j], h[i]
	}
	return h
}
