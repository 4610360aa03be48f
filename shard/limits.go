package shard

import (
	"errors"
	"hash/maphash"
	"slices"
	"sync"
)

// Stream limits: a device may hold Options.MaxStreams metric names, and a
// request that names a new metric for a device that has them all is
// refused whole (ErrTooManyStreams), before any shard applies any of it.
//
// Only a device's shard knows its names, and shards apply a request's
// parts concurrently, so the check cannot run in the shards without a
// second round trip per request. Instead a shard publishes the names of
// each device that reaches the limit, and Ingest checks a request against
// them before it sends anything, only while some device is full at all. A
// full device gains no names, so its published set stays valid.
//
// When a full device leaves memory (evicted) its set stays, marked away, so
// that the request that reloads it cannot bring new names past the limit.
// But while it is away its key may expire or be replaced, so an away set
// decides nothing: Ingest first loads the device (one extra round trip,
// only for such requests), which republishes or drops the set, and checks
// again. A shard keeps at most maxAway away sets, dropping the oldest: a
// fleet's worth of devices that once filled up must not hold memory
// forever (the price: one of those, reloaded, can pass the limit once by
// the new names of the request that reloads it).
//
// The limit is checked against the state a request finds: requests in
// flight when a device fills, and a request that brings a device to the
// limit, still apply, so a device can pass the limit by the new names they
// carry (fewer than MaxStreams each: a request naming more new metrics for
// one device than a device may hold is refused outright). So can a device
// whose names were not published here because the process restarted or
// the device was handed over from another cluster member: the samples that
// wait for its load are checked against nothing and applied on what the
// load brings (and what it takes while Redis cannot load it is replayed
// onto what Redis holds). The shard then republishes, and the next request
// is checked. Refusing those samples after the load would leave the rest
// of their requests applied (in other shards) and the 429 untrue. The snapshot format has no stream limit of its
// own, so such a device persists and restores like any other.

// maxAway bounds the away sets a shard keeps (each 8 bytes a name).
const maxAway = 1024

// fullDevice is a device at its stream limit and the hashes of its metric
// names, sorted; nothing changes one once published (a new one replaces it).
type fullDevice struct {
	id    string
	names []uint64
	away  bool        // the device is out of memory: load it before deciding
	next  *fullDevice // another full device whose ID hash collides
}

func (f *fullDevice) has(h uint64) bool {
	_, ok := slices.BinarySearch(f.names, h)
	return ok
}

// fullSet is a shard's full devices by ID hash. The shard goroutine
// writes it; Ingest callers read it.
type fullSet struct {
	mu sync.RWMutex
	m  map[uint64]*fullDevice // guarded by mu
	// The rest is owned by the shard goroutine. away lists the away sets,
	// oldest first, with the eviction it records; an entry whose seq is
	// not awaySeq[id] is stale (that set was reloaded, or evicted again
	// later), and does not count towards maxAway.
	away    []awayID
	awaySeq map[string]uint64
	seq     uint64
}

type awayID struct {
	id   string
	hash uint64
	seq  uint64
}

// nameHash is the hash a published set holds for a metric name.
func (s *Set) nameHash(name []byte) uint64 { return maphash.Bytes(s.seed, name) }

// noteStreams publishes d's names if it holds MaxStreams or more; call it
// whenever d gains a stream.
func (sh *shard) noteStreams(d *device) {
	if sh.restoring || len(d.streams) < sh.set.opts.MaxStreams {
		return
	}
	f := &fullDevice{id: d.id, names: make([]uint64, len(d.streams))}
	for i := range d.streams {
		f.names[i] = sh.set.nameHash([]byte(d.streams[i].name))
	}
	slices.Sort(f.names)
	sh.publish(d.hash, f)
}

// publish replaces f.id's set with f.
func (sh *shard) publish(h uint64, f *fullDevice) { sh.setFull(h, f.id, f) }

// unpublish removes id's set, if it has one.
func (sh *shard) unpublish(h uint64, id string) { sh.setFull(h, id, nil) }

// setFull replaces id's set with f, or removes it when f is nil, and keeps
// nfull the number of sets.
func (sh *shard) setFull(h uint64, id string, f *fullDevice) {
	sh.full.mu.Lock()
	if sh.full.m == nil {
		sh.full.m = make(map[uint64]*fullDevice)
	}
	rest, had := without(sh.full.m[h], id)
	switch {
	case f != nil:
		f.next = rest
		sh.full.m[h] = f
	case rest != nil:
		sh.full.m[h] = rest
	default:
		delete(sh.full.m, h)
	}
	sh.full.mu.Unlock()
	switch {
	case f != nil && !had:
		sh.set.nfull.Add(1)
	case f == nil && had:
		sh.set.nfull.Add(-1)
	}
}

// lookupFull returns id's published set, or nil.
func (sh *shard) lookupFull(h uint64, id string) *fullDevice {
	sh.full.mu.RLock()
	defer sh.full.mu.RUnlock()
	f := sh.full.m[h]
	for f != nil && f.id != id {
		f = f.next
	}
	return f
}

// noteLoaded publishes or unpublishes d after a successful load: what it
// holds now decides (a stale set, from before its key expired or was found
// corrupt, must not bind it).
func (sh *shard) noteLoaded(d *device) {
	delete(sh.full.awaySeq, d.id) // back: no longer away
	if len(d.streams) >= sh.set.opts.MaxStreams {
		sh.noteStreams(d)
	} else {
		sh.unpublish(d.hash, d.id)
	}
}

// noteEvicted marks d's set away, if it has one, and drops the oldest away
// sets past maxAway. A device evicted again and again counts once.
func (sh *shard) noteEvicted(d *device) {
	f := sh.lookupFull(d.hash, d.id)
	if f == nil {
		return
	}
	c := *f
	c.away = true
	sh.publish(d.hash, &c)
	fs := &sh.full
	if fs.awaySeq == nil {
		fs.awaySeq = make(map[string]uint64)
	}
	fs.seq++
	fs.awaySeq[d.id] = fs.seq
	fs.away = append(fs.away, awayID{d.id, d.hash, fs.seq})
	for len(fs.awaySeq) > maxAway {
		a := fs.away[0]
		fs.away = fs.away[1:]
		if fs.awaySeq[a.id] != a.seq {
			continue // stale
		}
		delete(fs.awaySeq, a.id)
		if f := sh.lookupFull(a.hash, a.id); f != nil && f.away {
			sh.unpublish(a.hash, a.id)
		}
	}
	if len(fs.away) > 2*len(fs.awaySeq)+64 { // drop the stale entries
		live := fs.away[:0]
		for _, a := range fs.away {
			if fs.awaySeq[a.id] == a.seq {
				live = append(live, a)
			}
		}
		clear(fs.away[len(live):])
		fs.away = live
	}
}

// without returns the chain f without id's entry (copying, not changing,
// the entries before it: readers may hold them), and whether it had one.
func without(f *fullDevice, id string) (*fullDevice, bool) {
	switch {
	case f == nil:
		return nil, false
	case f.id == id:
		return f.next, true
	}
	rest, had := without(f.next, id)
	if !had {
		return f, false
	}
	c := *f
	c.next = rest
	return &c, true
}

// checkLimits refuses b, before any of it is applied, if it would give a
// device more metrics than MaxStreams (see checkFull and checkWide).
//
// Both decide on published sets, and a set can be stale or missing while
// its device is out of memory: away (evicted: its key may have expired
// since) or never published since a restart (a device kept over a lowered
// limit). So the devices such a check would refuse, or cannot decide for,
// are loaded first, all at once, and b is checked again on what they
// hold: one extra round trip, only for requests the published sets alone
// would refuse or defer.
func (s *Set) checkLimits(b *Batch) error {
	var load []string
	if s.nfull.Load() > 0 {
		load = s.awayIn(b)
	}
	if len(load) == 0 {
		err := s.checkWide(b)
		if err == nil && s.nfull.Load() > 0 {
			err = s.checkFull(b)
		}
		var le *StreamLimitError
		if err == nil || s.opts.Store == nil || !errors.As(err, &le) {
			return err
		}
		load = append(load, le.Device)
	}
	if err := s.loadAll(load); err != nil {
		return err
	}
	if err := s.checkWide(b); err != nil {
		return err
	}
	return s.checkFull(b)
}

// awayIn returns the devices of b whose published sets are away.
func (s *Set) awayIn(b *Batch) []string {
	var ids []string
	var seen map[string]bool
	for i := range b.samples {
		smp := &b.samples[i]
		id := b.bytes(smp.dev)
		if f := s.shards[smp.shard].lookupFull(smp.hash, string(id)); f != nil && f.away && !seen[f.id] {
			if seen == nil {
				seen = make(map[string]bool)
			}
			seen[f.id] = true
			ids = append(ids, f.id)
		}
	}
	return ids
}

// loadAll brings the devices ids into memory (reads load them, and a
// successful load republishes or drops their sets), one read per device,
// all in flight at once.
func (s *Set) loadAll(ids []string) error {
	if !s.admit() {
		return ErrStopped
	}
	defer s.done()
	done := new(latch)
	done.add(int32(len(ids)))
	for _, id := range ids {
		o := &op{kind: opDevice, id: id, done: done, hash: maphash.String(s.seed, id)}
		sh := s.shards[s.shardOfHash(o.hash)]
		sh.pending.Add(1)
		sh.inbox <- o
	}
	done.wait()
	return nil
}

// checkFull refuses b if one of its samples names a metric new to a device
// at its stream limit, as its published set (away or not) stands.
func (s *Set) checkFull(b *Batch) error {
	for i := range b.samples {
		smp := &b.samples[i]
		f := s.shards[smp.shard].lookupFull(smp.hash, string(b.bytes(smp.dev)))
		if f == nil {
			continue
		}
		for j := smp.ms.lo; j < smp.ms.hi; j++ {
			name := b.bytes(b.metrics[j].name)
			if !f.has(s.nameHash(name)) {
				return &StreamLimitError{Device: f.id, Metric: string(name), Limit: s.opts.MaxStreams, Index: i}
			}
		}
	}
	return nil
}

// checkWide refuses b if it names more metrics new to one device than a
// device may hold, which no state could accept (names a published set
// holds are not new: a device kept over a lowered limit sends them all).
// Only a batch with more metric values than that can, so most batches
// skip it.
func (s *Set) checkWide(b *Batch) error {
	limit := s.opts.MaxStreams
	if len(b.metrics) <= limit || b.sameNames() && b.SampleMetrics(0) <= limit {
		return nil
	}
	names := make(map[string]struct{})
	for i := range b.metrics {
		names[string(b.bytes(b.metrics[i].name))] = struct{}{}
	}
	if len(names) <= limit {
		return nil
	}
	type key struct {
		dev, name string
	}
	seen := make(map[key]struct{})
	per := make(map[string]int)
	for i := range b.samples {
		smp := &b.samples[i]
		dev := string(b.bytes(smp.dev))
		f := s.shards[smp.shard].lookupFull(smp.hash, dev)
		for j := smp.ms.lo; j < smp.ms.hi; j++ {
			name := b.bytes(b.metrics[j].name)
			k := key{dev, string(name)}
			if _, ok := seen[k]; ok || f != nil && f.has(s.nameHash(name)) {
				continue
			}
			seen[k] = struct{}{}
			if per[dev]++; per[dev] > limit {
				return &StreamLimitError{Device: dev, Metric: k.name, Limit: limit, Index: i}
			}
		}
	}
	return nil
}

// sameNames reports whether every sample names the same metrics in the
// same order as the first, as fleets usually send: then the batch names no
// more metrics than its first sample, found without building a set.
func (b *Batch) sameNames() bool {
	first := b.samples[0].ms
	n := first.hi - first.lo
	for i := 1; i < len(b.samples); i++ {
		ms := b.samples[i].ms
		if ms.hi-ms.lo != n {
			return false
		}
		for j := range n {
			if string(b.bytes(b.metrics[first.lo+j].name)) != string(b.bytes(b.metrics[ms.lo+j].name)) {
				return false
			}
		}
	}
	return true
}
