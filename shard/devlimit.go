package shard

import (
	"errors"
	"fmt"
)

// Device limit: a Set holds at most Options.MaxDevices devices (MAX_DEVICES,
// sized so that their windows fit a pod's memory). A request that would add
// devices beyond it is refused whole (ErrTooManyDevices) before any shard
// applies any of it; the devices held keep working.
//
// Only a device's shard knows whether it is held, and the shards apply a
// request's parts concurrently, so Ingest reserves room first. Far from the
// limit it reserves a slot per sample, an upper bound on the devices the
// request can add; near it, it asks the shards how many of the request's
// devices are new (a probe: one more round trip, only then) and reserves
// those. A shard takes a slot of its request's reservation for each device
// it adds, and the request returns what is left when it completes. So held
// plus reserved never passes the limit, except by devices evicted between a
// probe and the ingest after it, by devices another member hands over
// without a request (cluster mode), which are held whatever the limit, and
// by a device a read loads at the limit when a sample for it arrives during
// the load. Otherwise a read at the limit loads the device, answers, and
// drops it again.

// DefaultMaxDevices is Options.MaxDevices' default: a million devices of a
// few streams fill a few GB.
const DefaultMaxDevices = 1_000_000

// ErrTooManyDevices means a request would have added devices beyond
// Options.MaxDevices; nothing was applied. The error is a
// *DeviceLimitError.
var ErrTooManyDevices = errors.New("too many devices")

// DeviceLimitError says how far a request would have gone past the limit.
type DeviceLimitError struct {
	Limit int // Options.MaxDevices
	Held  int // devices held (and reserved by requests in flight)
	New   int // devices the request would add
}

func (e *DeviceLimitError) Error() string {
	return fmt.Sprintf("this request would add %d devices to the %d held or being added here, beyond the limit of %d", e.New, e.Held, e.Limit)
}

func (e *DeviceLimitError) Unwrap() error { return ErrTooManyDevices }

// reserveDevices reserves room for b's new devices (see above); after b is
// applied or refused, releaseDevices returns what is left.
func (s *Set) reserveDevices(b *Batch) error {
	limit := int64(s.opts.MaxDevices)
	n := int64(len(b.samples))
	if s.devices.Load()+s.reserved.Add(n) <= limit {
		b.reserved.Store(n)
		return nil
	}
	s.reserved.Add(-n)
	if err := s.dispatch(b, opProbe); err != nil {
		return err
	}
	fresh := int64(0)
	for k, c := range b.counts {
		if c > 0 {
			fresh += int64(b.ops[k].fresh)
		}
	}
	if fresh == 0 {
		return nil
	}
	if r := s.reserved.Add(fresh); s.devices.Load()+r > limit {
		s.reserved.Add(-fresh)
		return &DeviceLimitError{Limit: int(limit), Held: int(s.devices.Load() + r - fresh), New: int(fresh)}
	}
	b.reserved.Store(fresh)
	return nil
}

// releaseDevices returns the slots b reserved and its shards did not take.
func (s *Set) releaseDevices(b *Batch) {
	if left := b.reserved.Swap(0); left > 0 {
		s.reserved.Add(-left)
	}
}

// took moves n devices a shard added for b from b's reservation to the
// held count (which the shard has already raised); beyond the reservation
// (devices evicted since the probe) there is nothing to move.
func (s *Set) took(b *Batch, n int64) {
	if n == 0 {
		return
	}
	left := b.reserved.Add(-n)
	if use := min(n, n+left); use > 0 {
		s.reserved.Add(-use)
	}
}

// probe counts the devices of o's samples that its shard does not hold
// (distinct, by ID hash: two IDs sharing one in a request count once,
// which a 64-bit hash makes vanishingly rare).
func (sh *shard) probe(o *op) {
	b := o.b
	seen := make(map[uint64]struct{}, len(o.idx))
	o.fresh = 0
	for _, i := range o.idx {
		smp := &b.samples[i]
		if _, ok := seen[smp.hash]; ok {
			continue
		}
		seen[smp.hash] = struct{}{}
		if d := sh.lookup(smp.hash, b.bytes(smp.dev)); d == nil || d.gone && sh.expired(d) {
			o.fresh++
		}
	}
}
