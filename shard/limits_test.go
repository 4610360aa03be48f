package shard

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"ai-load-service/shard/detect"
)

// ingestNames sends one sample of dev naming metrics names, all 1.
func ingestNames(s *Set, dev string, names ...string) error {
	b := new(Batch)
	b.Add([]byte(dev), 0)
	for _, n := range names {
		b.AddMetric([]byte(n), 1)
	}
	return s.Ingest(b)
}

func TestStreamLimit(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 4, MaxStreams: 4, Store: st, IdleEvict: time.Nanosecond})
	if err := ingestNames(s, "d", "m0", "m1", "m2", "m3"); err != nil {
		t.Fatalf("filling to the limit: %v", err)
	}
	// A batch across shards: another device's sample, then a new name for
	// the full device. Nothing of it may be applied.
	var other string
	for i := 0; other == ""; i++ {
		if c := fmt.Sprint("o", i); s.ShardOf([]byte(c)) != s.ShardOf([]byte("d")) {
			other = c
		}
	}
	b := new(Batch)
	b.Add([]byte(other), 0)
	b.AddMetric([]byte("x"), 1)
	b.Add([]byte("d"), 0)
	b.AddMetric([]byte("m0"), 2)
	b.AddMetric([]byte("m4"), 2)
	err := s.Ingest(b)
	var le *StreamLimitError
	if !errors.Is(err, ErrTooManyStreams) || !errors.As(err, &le) || le.Device != "d" || le.Metric != "m4" || le.Index != 1 || le.Limit != 4 {
		t.Fatalf("got %v; want a StreamLimitError for d, m4, sample 1", err)
	}
	if _, ok, _ := s.Device(other); ok {
		t.Fatal("the other device was created by a refused batch")
	}
	if ms, _, _ := s.Device("d"); len(ms) != 4 || ms[0].Count != 1 {
		t.Fatalf("d changed by a refused batch: %+v", ms)
	}
	if err := ingestNames(s, "d", "m3", "m1"); err != nil {
		t.Fatalf("known names refused: %v", err)
	}
	// Still full after eviction and a reload from the store.
	mustCollect(t, s, st, true)
	mustCollect(t, s, st, true)
	if s.Evicted() == 0 || s.nfull.Load() != 1 {
		t.Fatalf("evicted %d, full %d; want d evicted and still published", s.Evicted(), s.nfull.Load())
	}
	if err := ingestNames(s, "d", "m6"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("while evicted: %v; want ErrTooManyStreams", err)
	}
	if _, _, err := s.Device("d"); err != nil { // reloads it
		t.Fatal(err)
	}
	if err := ingestNames(s, "d", "m5"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("after a reload: %v; want ErrTooManyStreams", err)
	}
}

// TestStreamLimitWide: one request naming more metrics for one device than
// a device may hold is refused even for a new device; names repeated over
// many samples count once.
func TestStreamLimitWide(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 2, MaxStreams: 4})
	if err := ingestNames(s, "d", "a", "b", "c", "e", "f"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("5 names for a limit of 4: %v", err)
	}
	if s.Devices() != 0 {
		t.Fatal("refused request created a device")
	}
	b := new(Batch)
	for i := range 30 {
		b.Add([]byte("d"), int64(i))
		for _, n := range []string{"a", "b", "c"} {
			b.AddMetric([]byte(n), float64(i))
		}
	}
	if err := s.Ingest(b); err != nil {
		t.Fatalf("90 values of 3 names: %v", err)
	}
	mixed := func(samples ...[]string) error { // device, then its names
		b := new(Batch)
		for _, smp := range samples {
			b.Add([]byte(smp[0]), 0)
			for _, n := range smp[1:] {
				b.AddMetric([]byte(n), 1)
			}
		}
		return s.Ingest(b)
	}
	if err := mixed([]string{"x", "a", "b"}, []string{"y", "c", "e"}, []string{"x", "f"}); err != nil {
		t.Fatalf("3 names for x and 2 for y: %v", err)
	}
	err := mixed([]string{"z", "a", "b"}, []string{"y", "c"}, []string{"z", "e", "f", "g"})
	var le *StreamLimitError
	if !errors.As(err, &le) || le.Device != "z" || le.Metric != "g" || le.Index != 2 {
		t.Fatalf("5 names for z: %v", err)
	}
}

// TestStreamLimitConcurrent: requests racing to add names to one device
// are each applied whole or refused whole, and the device passes the limit
// by at most what the requests in flight carried.
func TestStreamLimitConcurrent(t *testing.T) {
	const limit, workers, each = 8, 8, 20
	s := MustNewSet(t, Options{Shards: 2, MaxStreams: limit})
	var mu sync.Mutex
	accepted := map[string]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				names := []string{fmt.Sprint("w", w, "-", i), "shared"}
				err := ingestNames(s, "d", names...)
				if err != nil && !errors.Is(err, ErrTooManyStreams) {
					t.Error(err)
					return
				}
				mu.Lock()
				accepted[names[0]] = accepted[names[0]] || err == nil
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ms, _, _ := s.Device("d")
	held := map[string]bool{}
	for _, m := range ms {
		held[m.Name] = true
	}
	for name, ok := range accepted {
		if ok != held[name] {
			t.Fatalf("%s: accepted %v, held %v", name, ok, held[name])
		}
	}
	if len(ms) < limit || len(ms) > limit+workers {
		t.Fatalf("device holds %d streams; want %d to %d", len(ms), limit, limit+workers)
	}
	if err := ingestNames(s, "d", "late"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("after the race: %v", err)
	}
	for name := range held { // every name it holds is still accepted
		if err := ingestNames(s, "d", name); err != nil {
			t.Fatalf("held name %s refused: %v", name, err)
		}
	}
}

// TestManyStreamsRoundTrip: the snapshot format has no stream limit of its
// own (a device with 65,600 metric names was written, then refused as
// corrupt on restore and lost).
func TestManyStreamsRoundTrip(t *testing.T) {
	snap := &Snapshot{Device: "d"}
	for i := range 70000 {
		snap.Streams = append(snap.Streams, StreamSnapshot{Name: fmt.Sprint("m", i), Values: []float64{float64(i)}, Count: 1,
			Last: float64(i), Sums: detect.WindowSums{Ref: float64(i)}})
	}
	b := snap.AppendBinary(nil)
	got, err := DecodeSnapshot(b)
	if err != nil || len(got.Streams) != 70000 {
		t.Fatalf("70,000 streams: %v", err)
	}
	// A count beyond what the bytes can hold is still refused at once.
	if _, err := DecodeSnapshot([]byte{1, 1, 'd', 0xff, 0xff, 0x03}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("65,535 streams in 6 bytes: %v", err)
	}
}

// savedWide returns a store holding device "d" with n streams m0...,
// saved under a limit of 1000, and their names.
func savedWide(t *testing.T, n int) (*memStore, []string) {
	t.Helper()
	st := newMemStore()
	a := MustNewSet(t, Options{Shards: 1, MaxStreams: 1000, Store: st})
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprint("m", i)
	}
	if err := ingestNames(a, "d", names...); err != nil {
		t.Fatal(err)
	}
	mustCollect(t, a, st, false)
	return st, names
}

// TestFullDeviceRestoredOverLimit: a device holding more streams than a
// lowered limit restores whole and stays full (published once, not once
// per stream).
func TestFullDeviceRestoredOverLimit(t *testing.T) {
	st, _ := savedWide(t, 50)
	b := MustNewSet(t, Options{Shards: 1, MaxStreams: 10, Store: st})
	if err := ingestNames(b, "d", "m7"); err != nil {
		t.Fatalf("a held name: %v", err)
	}
	if ms, _, _ := b.Device("d"); len(ms) != 50 {
		t.Fatalf("restored %d streams; want 50", len(ms))
	}
	if err := ingestNames(b, "d", "new"); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("new name over a lowered limit: %v", err)
	}
}
