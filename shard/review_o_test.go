package shard

// Failing tests from hostile review O of MAX_DEVICES (devlimit.go).

import (
	"testing"
	"time"
)

// TestReviewOReadLoadsPastDeviceLimit: devlimit.go promises that held plus
// reserved never passes MaxDevices "except by devices evicted between a
// probe and the ingest after it, and by devices another member hands
// over". But a read (Set.Device / Anomalies, GET /api/v1/devices/{d}) of a
// device that is not in memory goes through shard.read -> getDevice with
// a Store: the device is created and loaded from the store with no
// reservation and no check, and stays held when the store had it. With
// Redis and IDLE_EVICT, reads of evicted devices push a pod past
// MAX_DEVICES without bound (the memory the limit is there to cap), and
// the pod then refuses new devices' samples while holding devices nobody
// sends samples for.
//
// Reproduced with MaxDevices 1 and a memStore: device "a" ingested,
// snapshotted and evicted; device "b" ingested (1 held, the limit); then a
// read of "a".
//
// Correct: the read is answered (from the stored state) without holding
// more devices than MaxDevices: Devices() stays at most 1.
func TestReviewOReadLoadsPastDeviceLimit(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st, IdleEvict: time.Nanosecond, MaxDevices: 1})
	ingestOne(t, s, "a", 1, map[string]float64{"m": 4})
	mustCollect(t, s, st, false)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatalf("setup: %d devices after eviction; want 0", s.Devices())
	}
	ingestOne(t, s, "b", 2, map[string]float64{"m": 4})
	if _, ok, err := s.Device("a"); !ok || err != nil {
		t.Fatalf("setup: evicted device not readable: %v %v", ok, err)
	}
	if n := s.Devices(); n > 1 {
		t.Fatalf("a read holds %d devices with MaxDevices 1", n)
	}
}
