package shard

import "sync"

// Stream limits: a device may hold Options.MaxStreams metric names, and a
// request that names a new metric for a device that has them all is
// refused whole (ErrTooManyStreams), before any shard applies any of it.
//
// Only a device's shard knows its names, and shards apply a request's
// parts concurrently, so the check cannot run in the shards without a
// second round trip per request. Instead a shard publishes the names of
// each device that reaches the limit, and Ingest checks a request against
// them before it sends anything, only while some device is full at all.
// A full device gains no names, so its published set stays valid; it stays
// published while the device is out of memory (evicted, or its load failed
// in an outage), so that a reload or an outage cannot admit new names, and
// is replaced or dropped by the device's next successful load.
//
// The limit is checked against the state a request finds: requests in
// flight when a device fills, and a request that brings a device to the
// limit, still apply, so a device can pass the limit by the new names they
// carry (fewer than MaxStreams each: a request naming more for one device
// than a device may hold is refused outright). So can a device whose
// names were not published because the process restarted: what it takes
// while unrestored is replayed onto what Redis holds. The shard then
// republishes. The snapshot format has no stream limit of its own, so such
// a device persists and restores like any other.

// fullDevice is a device at its stream limit and its metric names, which
// nothing changes once published (a new set replaces it).
type fullDevice struct {
	id    string
	names map[string]struct{}
	next  *fullDevice // another full device whose ID hash collides
}

// fullSet is a shard's full devices by ID hash. The shard goroutine
// writes it; Ingest callers read it.
type fullSet struct {
	mu sync.RWMutex
	m  map[uint64]*fullDevice // guarded by mu
}

// noteStreams publishes d's names if it holds MaxStreams or more; call it
// whenever d gains a stream.
func (sh *shard) noteStreams(d *device) {
	if sh.restoring || len(d.streams) < sh.set.opts.MaxStreams {
		return
	}
	f := &fullDevice{id: d.id, names: make(map[string]struct{}, len(d.streams))}
	for i := range d.streams {
		f.names[d.streams[i].name] = struct{}{}
	}
	sh.full.mu.Lock()
	if sh.full.m == nil {
		sh.full.m = make(map[uint64]*fullDevice)
	}
	rest, had := without(sh.full.m[d.hash], d.id)
	f.next = rest
	sh.full.m[d.hash] = f
	sh.full.mu.Unlock()
	if !had {
		sh.set.nfull.Add(1)
	}
}

// noteLoaded publishes or unpublishes d after a successful load: what it
// holds now decides (a stale set, from before its key expired or was found
// corrupt, must not bind it).
func (sh *shard) noteLoaded(d *device) {
	if len(d.streams) >= sh.set.opts.MaxStreams {
		sh.noteStreams(d)
		return
	}
	sh.full.mu.Lock()
	rest, had := without(sh.full.m[d.hash], d.id)
	if had {
		if rest != nil {
			sh.full.m[d.hash] = rest
		} else {
			delete(sh.full.m, d.hash)
		}
	}
	sh.full.mu.Unlock()
	if had {
		sh.set.nfull.Add(-1)
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
// at its stream limit. It runs before b's ops are sent.
func (s *Set) checkFull(b *Batch) error {
	for i := range b.samples {
		smp := &b.samples[i]
		sh := s.shards[smp.shard]
		sh.full.mu.RLock()
		f := sh.full.m[smp.hash]
		for f != nil && f.id != string(b.bytes(smp.dev)) {
			f = f.next
		}
		if f != nil {
			for j := smp.ms.lo; j < smp.ms.hi; j++ {
				name := b.bytes(b.metrics[j].name)
				if _, ok := f.names[string(name)]; !ok {
					sh.full.mu.RUnlock()
					return &StreamLimitError{Device: f.id, Metric: string(name), Limit: s.opts.MaxStreams, Index: i}
				}
			}
		}
		sh.full.mu.RUnlock()
	}
	return nil
}

// checkWide refuses b if it names more metrics for one device than a
// device may hold, which no state could accept. Only a batch with more
// metric values than that can, so most batches skip it.
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
		for j := smp.ms.lo; j < smp.ms.hi; j++ {
			k := key{dev, string(b.bytes(b.metrics[j].name))}
			if _, ok := seen[k]; ok {
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
