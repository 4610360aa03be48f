package shard

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// ingestDevices ingests one sample of metric "m" for each of ids.
func ingestDevices(s *Set, ids ...string) error {
	b := new(Batch)
	for _, id := range ids {
		b.Add([]byte(id), 1)
		b.AddMetric([]byte("m"), 1)
	}
	return s.Ingest(b)
}

// TestDeviceLimit: a request that would add devices beyond MaxDevices is
// refused whole, its known devices' samples included; devices held keep
// working, through the fast path and the probe alike.
func TestDeviceLimit(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 3, MaxDevices: 10})
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("dev-%d", i))
	}
	if err := ingestDevices(s, ids...); err != nil {
		t.Fatal(err)
	}
	err := ingestDevices(s, "dev-0", "dev-1", "new-1")
	var e *DeviceLimitError
	if !errors.As(err, &e) || !errors.Is(err, ErrTooManyDevices) || e.New != 1 || e.Held != 10 || e.Limit != 10 {
		t.Fatalf("one new device past the limit: %v; want a DeviceLimitError with 1 new, 10 held", err)
	}
	if ms, ok, _ := s.Device("dev-0"); !ok || ms[0].Count != 1 {
		t.Fatalf("the refused request applied dev-0's sample: %+v", ms)
	}
	if _, ok, _ := s.Device("new-1"); ok {
		t.Fatal("the refused device was created")
	}
	// Known devices, many samples each: the probe finds nothing new.
	many := make([]string, 0, 50)
	for i := range 50 {
		many = append(many, ids[i%10])
	}
	if err := ingestDevices(s, many...); err != nil {
		t.Fatalf("known devices at the limit: %v", err)
	}
	if s.Devices() != 10 || s.reserved.Load() != 0 {
		t.Fatalf("%d devices, %d reserved after the requests; want 10 and 0", s.Devices(), s.reserved.Load())
	}

	// One below the limit, a request of many samples for one new device
	// passes the fast path's bound only through the probe.
	s2 := MustNewSet(t, Options{Shards: 2, MaxDevices: 10})
	if err := ingestDevices(s2, ids[:9]...); err != nil {
		t.Fatal(err)
	}
	same := make([]string, 40)
	for i := range same {
		same[i] = "only-new"
	}
	if err := ingestDevices(s2, same...); err != nil || s2.Devices() != 10 {
		t.Fatalf("40 samples of one new device at 9 of 10: %v, %d devices", err, s2.Devices())
	}
	if s2.reserved.Load() != 0 {
		t.Fatalf("%d slots left reserved", s2.reserved.Load())
	}
}

// TestDeviceLimitConcurrent: many clients adding new devices at once never
// take the Set past the limit, every accepted device is held, and every
// refusal is a DeviceLimitError.
func TestDeviceLimitConcurrent(t *testing.T) {
	const limit = 200
	s := MustNewSet(t, Options{Shards: 4, MaxDevices: limit})
	var accepted atomic.Int64
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range 40 {
				ids := []string{fmt.Sprintf("c%d-r%d-a", c, r), fmt.Sprintf("c%d-r%d-b", c, r)}
				switch err := ingestDevices(s, ids...); {
				case err == nil:
					accepted.Add(2)
				case !errors.Is(err, ErrTooManyDevices):
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := int64(s.Devices()); got != accepted.Load() || got > limit || got < limit-1 {
		t.Fatalf("%d devices held, %d accepted; want them equal, at most %d and at least %d", got, accepted.Load(), limit, limit-1)
	}
	if s.reserved.Load() != 0 {
		t.Fatalf("%d slots left reserved", s.reserved.Load())
	}
}
