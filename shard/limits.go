package shard

import (
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
// whose names were not published because the process restarted: what it
// takes while Redis cannot load it is replayed onto what Redis holds. The
// shard then republishes. The snapshot format has no stream limit of its
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
	// away lists the IDs of away sets, oldest first (may hold IDs no longer
	// away); owned by the shard goroutine.
	away []awayID
}

type awayID struct {
	id   string
	hash uint64
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
	if len(d.streams) >= sh.set.opts.MaxStreams {
		sh.noteStreams(d)
	} else {
		sh.unpublish(d.hash, d.id)
	}
}

// noteEvicted marks d's set away, if it has one, and drops the oldest away
// sets past maxAway.
func (sh *shard) noteEvicted(d *device) {
	f := sh.lookupFull(d.hash, d.id)
	if f == nil {
		return
	}
	c := *f
	c.away = true
	sh.publish(d.hash, &c)
	sh.full.away = append(sh.full.away, awayID{d.id, d.hash})
	for len(sh.full.away) > maxAway {
		a := sh.full.away[0]
		sh.full.away = sh.full.away[1:]
		if f := sh.lookupFull(a.hash, a.id); f != nil && f.away {
			sh.unpublish(a.hash, a.id)
		}
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

// checkFull refuses b if one of its samples names a metric new to a device
// at its stream limit. It runs before b's ops are sent. A device whose set
// is away is loaded first (and its set republished or dropped), then b is
// checked again; an away set that is still away then (its load failed)
// binds as it stands.
func (s *Set) checkFull(b *Batch) error {
	load, err := s.checkFullOnce(b, true)
	if err != nil || len(load) == 0 {
		return err
	}
	for _, id := range load {
		if _, _, err := s.Device(id); err != nil {
			return err
		}
	}
	_, err = s.checkFullOnce(b, false)
	return err
}

// checkFullOnce checks b against the published sets; with deferAway it
// returns the IDs of away devices instead of deciding for them.
func (s *Set) checkFullOnce(b *Batch, deferAway bool) (load []string, err error) {
	for i := range b.samples {
		smp := &b.samples[i]
		sh := s.shards[smp.shard]
		f := sh.lookupFull(smp.hash, string(b.bytes(smp.dev)))
		if f == nil {
			continue
		}
		if f.away && deferAway {
			if !slices.Contains(load, f.id) {
				load = append(load, f.id)
			}
			continue
		}
		for j := smp.ms.lo; j < smp.ms.hi; j++ {
			name := b.bytes(b.metrics[j].name)
			if !f.has(s.nameHash(name)) {
				return nil, &StreamLimitError{Device: f.id, Metric: string(name), Limit: s.opts.MaxStreams, Index: i}
			}
		}
	}
	return load, nil
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
