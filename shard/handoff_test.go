package shard

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard/detect"
)

// peerStore loads devices the way a cluster member does: it asks another
// Set to hand them over to member self.
type peerStore struct {
	from *Set
	self string
}

func (p peerStore) Load(id string, done func(*Snapshot, error)) {
	go func() {
		h, err := p.from.HandOff(id, p.self, 7)
		if err != nil || h.State == nil {
			done(nil, err)
			return
		}
		done(DecodeSnapshot(h.State))
	}()
}

// TestHandOff: a device moves from a to b whole; afterwards a applies
// nothing of it, reports its samples as moved, answers reads with where
// it went, and hands the same state again only to the member that took it.
func TestHandOff(t *testing.T) {
	o := Options{Shards: 2, WindowSize: 16, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1}
	a, ref := MustNewSet(t, o), MustNewSet(t, o)
	ob := o
	ob.Store, ob.LoadOnly = peerStore{a, "b"}, true
	b := MustNewSet(t, ob)
	for i := range 20 {
		for _, s := range []*Set{a, ref} {
			ingestOne(t, s, "d1", int64(i), map[string]float64{"m": float64(i % 3), "n": 1})
			ingestOne(t, s, "d2", int64(i), map[string]float64{"m": float64(i % 5)})
		}
	}
	// b's first sample of d1 takes it from a, then applies.
	ingestOne(t, b, "d1", 20, map[string]float64{"m": 9, "n": 1})
	ingestOne(t, ref, "d1", 20, map[string]float64{"m": 9, "n": 1})
	got, _, _ := b.Device("d1")
	want, _, _ := ref.Device("d1")
	if !slices.Equal(got, want) {
		t.Fatalf("d1 at the new owner:\n got %+v\nwant %+v", got, want)
	}
	if a.Devices() != 1 || a.Tombstones() != 1 || a.Streams() != 1 {
		t.Fatalf("a holds %d devices, %d streams, %d tombstones; want 1, 1, 1", a.Devices(), a.Streams(), a.Tombstones())
	}

	batch := batchOf([]string{"d2", "d1", "d2"}, "m", []float64{1, 2, 3})
	if err := a.Ingest(batch); err != nil {
		t.Fatal(err)
	}
	if m := batch.Moved(); len(m) != 1 || m[0] != (Moved{1, "b"}) || batch.Applied() != 2 {
		t.Fatalf("moved %+v, applied %d; want sample 1 moved to b, 2 values applied", m, batch.Applied())
	}
	if _, _, err := a.Device("d1"); !errors.Is(err, ErrMoved) {
		t.Fatalf("read of a handed-over device: %v; want ErrMoved", err)
	}
	if _, _, err := a.Anomalies("d1"); !errors.Is(err, ErrMoved) {
		t.Fatalf("anomalies of a handed-over device: %v; want ErrMoved", err)
	}
	if held, to, _ := a.Held("d1"); held || to != "b" {
		t.Fatal("a still holds d1")
	}
	first, _ := ref.HandOff("d1", "x", 1) // ref's own copy, for comparison only
	again, _ := a.HandOff("d1", "b", 7)
	other, _ := a.HandOff("d1", "c", 7)
	later, _ := a.HandOff("d1", "b", 8)
	if again.State == nil || other.State != nil || other.MovedTo != "b" || later.State != nil || later.MovedTo != "b" {
		t.Fatalf("asked again: %d bytes; asked by another: %+v; by a later load of b: %+v; want the state again, then moved to b twice", len(again.State), other, later)
	}
	if len(first.State) == 0 {
		t.Fatal("ref handed nothing")
	}
	none, _ := a.HandOff("never", "b", 7)
	if none.State != nil || none.Busy || none.MovedTo != "" {
		t.Fatalf("unknown device: %+v; want nothing", none)
	}

	// d1 comes back: once b's tombstone is void, a takes samples again.
	if err := a.Forget([]string{"b"}, nil); err != nil {
		t.Fatal(err)
	}
	batch = batchOf([]string{"d1"}, "m", []float64{4})
	if err := a.Ingest(batch); err != nil || len(batch.Moved()) != 0 {
		t.Fatalf("after Forget: %v, moved %+v; want applied", err, batch.Moved())
	}
	if a.Devices() != 2 || a.Tombstones() != 0 {
		t.Fatalf("after Forget: %d devices, %d tombstones; want 2, 0", a.Devices(), a.Tombstones())
	}
}

// TestHandOffBusyWhileLoading: a device still loading cannot be handed
// over whole: the taker is told to ask again.
func TestHandOffBusyWhileLoading(t *testing.T) {
	st := delayStore{newMemStore(), map[string]time.Duration{"slow": 300 * time.Millisecond}}
	s := MustNewSet(t, Options{Shards: 1, Store: st})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ingestOne(t, s, "slow", 1, map[string]float64{"m": 1})
	}()
	for s.Devices() == 0 {
		time.Sleep(time.Millisecond)
	}
	h, err := s.HandOff("slow", "b", 1)
	if err != nil || !h.Busy || h.State != nil {
		t.Fatalf("handoff while loading: %+v, %v; want busy", h, err)
	}
	<-done
	if h, _ = s.HandOff("slow", "b", 1); h.State == nil {
		t.Fatalf("handoff once loaded: %+v; want the state", h)
	}
}

// TestHandedOffNotCollected: with persistence, a device handed over while
// it had unwritten changes is written once more by this member, as the
// state handed over (so a crash of the taker before its own first
// snapshot loses no more than one interval; fencing drops this write if
// the taker's comes first), and never after; its tombstone is freed only
// once out of the persister's lists and expired.
func TestHandedOffNotCollected(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 1, Store: st, Tombstone: time.Millisecond})
	ingestOne(t, s, "d1", 1, map[string]float64{"m": 1})
	ingestOne(t, s, "d2", 1, map[string]float64{"m": 1})
	h, _ := s.HandOff("d1", "b", 1)
	if h.State == nil {
		t.Fatal("nothing handed")
	}
	snaps, err := s.Collect(true)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(snaps, func(a, b Encoded) int { return strings.Compare(a.Device, b.Device) })
	if len(snaps) != 2 || snaps[0].Device != "d1" || !bytes.Equal(snaps[0].Data, h.State) || snaps[1].Device != "d2" {
		t.Fatalf("collected %+v; want d1 as handed over, and d2", snaps)
	}
	ingestOne(t, s, "d2", 2, map[string]float64{"m": 2})
	if snaps, _ = s.Collect(true); len(snaps) != 1 || snaps[0].Device != "d2" {
		t.Fatalf("second collect %+v; want d2 alone", snaps)
	}
	time.Sleep(5 * time.Millisecond)
	if err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
	if s.Tombstones() != 0 || s.Devices() != 1 {
		t.Fatalf("after sweep: %d tombstones, %d devices; want 0, 1", s.Tombstones(), s.Devices())
	}
	// An expired tombstone's device loads anew on its next touch.
	st.save([]Encoded{{Device: "d1", Data: snapOf(t, "d1")}})
	ingestOne(t, s, "d1", 2, map[string]float64{"m": 2})
	if ms, ok, _ := s.Device("d1"); !ok || ms[0].Count != 2 {
		t.Fatalf("d1 after expiry: %+v; want the stored sample and the new one", ms)
	}
}

// snapOf encodes a device with one sample of m=1.
func snapOf(t *testing.T, id string) []byte {
	s := MustNewSet(t, Options{Shards: 1})
	ingestOne(t, s, id, 1, map[string]float64{"m": 1})
	h, _ := s.HandOff(id, "x", 1)
	if !bytes.Contains(h.State, []byte(id)) {
		t.Fatal("no state")
	}
	return h.State
}

// TestSnapshotGen: every snapshot taken (Collect, HandOff) has a Gen one
// more than the state it came from, across a restore and a handoff, and
// version 1 snapshots (no Gen) still load.
func TestSnapshotGen(t *testing.T) {
	st := newMemStore()
	a := MustNewSet(t, Options{Shards: 1, Store: st})
	ingestOne(t, a, "d", 1, map[string]float64{"m": 1})
	snaps, _ := a.Collect(false)
	ingestOne(t, a, "d", 2, map[string]float64{"m": 2})
	again, _ := a.Collect(false)
	if len(snaps) != 1 || snaps[0].Gen != 1 || len(again) != 1 || again[0].Gen != 2 {
		t.Fatalf("gens %+v then %+v; want 1 then 2", snaps, again)
	}
	st.save(again)
	b := MustNewSet(t, Options{Shards: 1, Store: st})
	ingestOne(t, b, "d", 3, map[string]float64{"m": 3}) // restored at gen 2
	h, _ := b.HandOff("d", "c", 1)
	got, err := DecodeSnapshot(h.State)
	if err != nil || got.Gen != 3 {
		t.Fatalf("handed gen %d, %v; want 3", got.Gen, err)
	}
	// Version 1: version byte, ID, no streams, no history.
	v1, err := DecodeSnapshot([]byte{1, 1, 'd', 0, 0})
	if err != nil || v1.Device != "d" || v1.Gen != 0 {
		t.Fatalf("version 1: %+v, %v", v1, err)
	}
	if _, err := DecodeSnapshot(append([]byte{2}, "aisv\x01d\x00\x00"...)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 2 cut in its gen: %v; want ErrCorrupt", err)
	}
}
