package shard

// Handing a device over to another cluster member, which now owns it. The
// taker asks (Set.HandOff, through the server's handoff route); the shard
// encodes the device, drops its state and keeps a tombstone: samples and
// reads for the device that reach the shard afterwards (a request that
// chose this pod before its view changed, or queued behind the handoff)
// are not applied but reported as moved, for the caller to send on. So
// each update lands in exactly one copy, and the shard's queue order
// decides which: everything queued before the handoff is in the state
// handed over. docs/cluster.md has the whole protocol.

import (
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"time"
)

// Handed is what HandOff found for a device.
type Handed struct {
	// State is the device's snapshot (the AppendBinary encoding), now the
	// taker's; nil when nothing was handed.
	State []byte
	// Busy means the device is loading here, or runs unrestored (its
	// stored state could not be loaded): it cannot be handed over whole
	// yet; ask again shortly.
	Busy bool
	// MovedTo is the member the device was handed to before, when that is
	// not the one asking now.
	MovedTo string
	// Unrestored (with Busy): the device runs on fresh state here, its
	// stored state not loaded yet: the taker is better served by the
	// store itself.
	Unrestored bool
	// Again: the state was handed over before, to the same load, and is
	// handed again (the first answer was lost).
	Again bool
}

// Moved is a sample Ingest did not apply because its device was handed
// over to member To.
type Moved struct {
	Sample int // index in the batch
	To     string
}

// ErrMoved is wrapped by the *MovedError a read of a handed-over device
// returns.
var ErrMoved = errors.New("device handed over to another member")

// MovedError names the member a device was handed to.
type MovedError struct{ Device, To string }

func (e *MovedError) Error() string {
	return fmt.Sprintf("device %q was handed over to member %s", e.Device, e.To)
}

func (e *MovedError) Unwrap() error { return ErrMoved }

// HandOff gives device id to member to: it returns the device's state
// and drops it here. For Options.Tombstone afterwards, samples of the
// device are not applied here but listed by Batch.Moved, and reads fail
// with a *MovedError. The same member asking again with the same token
// (the same load: its first answer may have been lost) gets the same
// state; any other ask gets MovedTo, so a later load of the taker (after
// it evicted the device, or restarted) never gets this old state. A device
// not held here gives an empty Handed.
//
// HandOff works after Seal, until Stop: a stopping member hands its
// devices over until its shards end.
func (s *Set) HandOff(id, to string, token uint64) (Handed, error) {
	if !s.enter() {
		return Handed{}, ErrStopped
	}
	o := &op{kind: opHandoff, id: id, to: to, token: token, done: new(latch)}
	o.done.add(1)
	o.hash = maphash.String(s.seed, id)
	sh := s.shards[s.shardOfHash(o.hash)]
	sh.pending.Add(1)
	sh.inbox <- o
	s.leave()
	o.done.wait()
	return o.handed, nil
}

// Sweep frees the tombstones older than Options.Tombstone. Collect does
// this too; a member without persistence calls it now and then.
func (s *Set) Sweep() error {
	_, err := s.broadcast(op{kind: opSweep})
	return err
}

// HeldIDs returns the IDs of the devices held here (not loading, not handed
// over): what a stopping member hands over.
func (s *Set) HeldIDs() ([]string, error) {
	ops, err := s.broadcast(op{kind: opList})
	if err != nil {
		return nil, err
	}
	var ids []string
	for i := range ops {
		ids = append(ids, ops[i].ids...)
	}
	return ids, nil
}

func (sh *shard) list(o *op) {
	for _, first := range sh.devices {
		for d := first; d != nil; d = d.next {
			if !d.gone && !d.loading && len(d.streams) > 0 {
				o.ids = append(o.ids, d.id)
			}
		}
	}
}

// Forget voids the tombstones of devices handed to any of members: they
// left the view, or one hands a device back (ids non-nil: only those). The
// next touch of such a device loads it as new, asking the members that
// may hold it.
func (s *Set) Forget(members []string, ids []string) error {
	if len(members) == 0 {
		return nil
	}
	_, err := s.broadcast(op{kind: opForget, ids: ids, members: members})
	return err
}

func (sh *shard) forget(o *op) {
	if sh.ngone == 0 {
		return
	}
	void := func(d *device) {
		if d != nil && d.gone && slices.Contains(o.members, d.to) {
			d.goneAt = 0
		}
	}
	if o.ids != nil {
		for _, id := range o.ids {
			h := maphash.String(sh.set.seed, id)
			if sh.set.shardOfHash(h) == sh.index {
				void(sh.lookup(h, []byte(id)))
			}
		}
		return
	}
	for _, first := range sh.devices {
		for d := first; d != nil; d = d.next {
			void(d)
		}
	}
}

// Tombstones returns how many handed-over devices are remembered.
func (s *Set) Tombstones() int { return int(s.tombs.Load()) }

func (sh *shard) handoff(o *op) {
	d := sh.lookup(o.hash, []byte(o.id))
	switch {
	case d == nil:
	case d.gone:
		if d.to == o.to && d.token == o.token {
			o.handed.State, o.handed.Again = d.handed, true
		} else {
			o.handed.MovedTo = d.to
		}
	case d.loading || d.retrying || d.unrestored:
		o.handed.Busy = true
		o.handed.Unrestored = d.unrestored && !d.loading
	case len(d.streams) > 0:
		d.gen++ // the taker's snapshots come after any written here
		data := d.encode()
		if sh.set.opts.Store != nil && !sh.set.opts.LoadOnly {
			// Written by this member's next snapshot too: until the taker
			// writes its own, a crash of the taker would otherwise lose the
			// changes this member never wrote (fencing drops this write if
			// the taker's comes first).
			sh.handedSnaps = append(sh.handedSnaps, Encoded{Device: d.id, Data: data, Gen: d.gen})
		}
		sh.bury(d, o.to, data)
		d.token = o.token
		o.handed.State = data
	}
}

// bury drops d's state and leaves it as a tombstone: handed to member to,
// with data.
func (sh *shard) bury(d *device, to string, data []byte) {
	s := sh.set
	sh.ndev--
	s.devices.Add(-1)
	s.streams.Add(-int64(len(d.streams)))
	if sh.lookupFull(d.hash, d.id) != nil {
		sh.unpublish(d.hash, d.id)
	}
	sh.release(d)
	d.index, d.history, d.hnext, d.replay = nil, nil, 0, nil
	d.gone, d.to, d.handed, d.goneAt = true, to, data, time.Now().UnixNano()
	sh.ngone++
	s.tombs.Add(1)
}

// expired reports a tombstone older than Options.Tombstone, or voided by
// Forget: the device may be held here again.
func (sh *shard) expired(d *device) bool {
	return d.gone && (d.goneAt == 0 || time.Now().UnixNano()-d.goneAt > int64(sh.set.opts.Tombstone))
}

// revive turns an expired tombstone back into an empty device that is held
// here (getDevice then loads it as new).
func (sh *shard) revive(d *device) {
	d.gone, d.to, d.handed = false, "", nil
	sh.ngone--
	sh.set.tombs.Add(-1)
	sh.ndev++
	sh.set.devices.Add(1)
}

// sweep frees expired tombstones.
func (sh *shard) sweep() {
	if sh.ngone == 0 {
		return
	}
	for h, first := range sh.devices {
		for d, next := first, (*device)(nil); d != nil; d = next {
			next = d.next
			if sh.expired(d) && !d.dirty { // a dirty one is in the persister's lists
				sh.ngone--
				sh.set.tombs.Add(-1)
				sh.unlink(h, d)
				sh.freeDevice(d)
			}
		}
	}
}
