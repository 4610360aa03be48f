package shard

// Failing tests from hostile review P.

import (
	"fmt"
	"testing"
	"time"
)

// TestReviewP_ReadsAtDeviceLimitLeakFullSets: limits.go bounds the names a
// shard keeps published for full devices that are not in memory ("A shard
// keeps at most maxAway away sets, dropping the oldest: a fleet's worth of
// devices that once filled up must not hold memory forever"; 8 bytes a
// name, up to MAX_STREAMS_PER_DEVICE names a device). But a read at
// MAX_DEVICES loads the device transiently (review O's fix): settle calls
// noteLoaded, which publishes the full device's names as a live (not
// away) set and clears its away entry, and then drops the device with
// drop(idle=false), which never calls noteEvicted. The set stays
// published for a device that is not in memory, outside the away list, so
// maxAway never bounds it: every full device read while the pod is at its
// device limit (a dashboard walking devices, or any client with an ingest
// token) leaves its names in memory for good, at the very moment the pod's
// memory is at the cap MAX_DEVICES exists for.
//
// Reproduced with a restart: a first Set stores maxAway+300 full devices
// (MaxStreams 2) in a memStore; a second Set on that store holds one
// device (MaxDevices 1, the limit) and reads each stored device once. The
// reads are answered and no device is kept (Devices() stays 1), but the
// shard then publishes a set for every device read. Correct: sets of
// devices not in memory are bounded by maxAway, as those of evicted
// devices are.
func TestReviewP_ReadsAtDeviceLimitLeakFullSets(t *testing.T) {
	const limit, devices = 2, maxAway + 300
	st := newMemStore()
	first := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st})
	b := new(Batch)
	for d := range devices {
		b.Reset()
		b.Add([]byte(fmt.Sprint("dev-", d)), 0)
		for m := range limit {
			b.AddMetric([]byte(fmt.Sprint("metric-", m)), 1)
		}
		if err := first.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	if n := mustCollect(t, first, st, false); n != devices {
		t.Fatalf("setup: %d snapshots; want %d", n, devices)
	}
	first.Stop()

	s := MustNewSet(t, Options{Shards: 1, MaxStreams: limit, Store: st, MaxDevices: 1})
	ingestOne(t, s, "filler", 1, map[string]float64{"m": 1})
	for d := range devices {
		if _, ok, err := s.Device(fmt.Sprint("dev-", d)); !ok || err != nil {
			t.Fatalf("setup: stored device dev-%d not readable: %v %v", d, ok, err)
		}
	}
	// The shard answers a read before it drops the device (settle):
	// the last one may still be held for a moment.
	for deadline := time.Now().Add(5 * time.Second); s.Devices() != 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := s.Devices(); n != 1 {
		t.Fatalf("setup: %d devices held after the reads; want 1 (the reads at the limit keep nothing)", n)
	}
	sh := s.shards[0]
	sh.full.mu.RLock()
	sets, away := 0, 0
	for _, f := range sh.full.m {
		for ; f != nil; f = f.next {
			sets++
			if f.away {
				away++
			}
		}
	}
	sh.full.mu.RUnlock()
	t.Logf("after %d reads at the device limit: %d published sets (%d away), nfull %d, 1 device held",
		devices, sets, away, s.nfull.Load())
	if sets > maxAway {
		t.Fatalf("%d published name sets for devices not in memory (bound %d): reads at MAX_DEVICES leave every full "+
			"device's names published, outside the away list that maxAway bounds", sets, maxAway)
	}
}

// TestReviewP_ReadDuringOutageHeldPastDeviceLimit: devlimit.go promises
// that held plus reserved never passes MaxDevices except by devices
// evicted between a probe and its ingest, devices handed over, and "a
// device a read loads at the limit when a sample for it arrives during the
// load"; otherwise "a read at the limit loads the device, answers, and
// drops it again". When the store cannot answer (a Redis outage), the read
// at the limit settles with an error: settle marks the device unrestored
// and clears transient, and the drop is skipped because it is unrestored.
// The device stays held (an empty unrestored device, past the limit) until
// a round's scan, and if the persister's unrestored retry (every second,
// Writer.loop) runs first, as it does whenever SNAPSHOT_INTERVAL is over
// a second or rounds are stretched by pacing, the retry restores it from
// Redis and it is held for good, until IDLE_EVICT, with no sample ever
// sent for it. Each read of a distinct device during an outage adds one:
// a pod at MAX_DEVICES ends up holding as many more devices as were read.
//
// Correct: after the read is answered and Redis is back, the pod holds at
// most MaxDevices devices.
func TestReviewP_ReadDuringOutageHeldPastDeviceLimit(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st, IdleEvict: time.Nanosecond, MaxDevices: 1})
	ingestOne(t, s, "x", 1, map[string]float64{"m": 4})
	mustCollect(t, s, st, false)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatalf("setup: %d devices after eviction; want 0", s.Devices())
	}
	ingestOne(t, s, "filler", 2, map[string]float64{"m": 4}) // at the limit
	st.setDown(true)
	if _, _, err := s.Device("x"); err != nil {
		t.Fatal(err)
	}
	afterRead := s.Devices()
	st.setDown(false)
	if _, err := s.Retry(false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Retrying() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	t.Logf("devices held: %d after the read during the outage, %d after the retry (MaxDevices 1, unrestored %d)",
		afterRead, s.Devices(), s.Unrestored())
	if n := s.Devices(); n > 1 {
		t.Fatalf("%d devices held with MaxDevices 1: a read at the limit during an outage kept its device, and the "+
			"unrestored retry restored it for good, although no sample was ever sent for it", n)
	}
}
