package shard

import (
	"cmp"
	"errors"
	"math"
	"slices"
	"time"

	"ai-load-service/shard/detect"
)

// Store is what a durable Set loads devices from (package persist
// implements it over Redis). Shards never wait on it: Load must return at
// once and call done later, from another goroutine, exactly once.
type Store interface {
	// Load fetches device id's snapshot: (nil, nil) when none is stored,
	// an error when the store could not answer.
	Load(id string, done func(*Snapshot, error))
}

type loadResult struct {
	hash  uint64
	id    string
	snap  *Snapshot
	err   error
	retry bool
	seq   uint32 // the device's load it answers (see device.loadSeq)
}

// parked is an op waiting for its device to load: sample i of an ingest
// op, or a read.
type parked struct {
	o      *op
	sample int32
}

// kept is a sample taken while the device is unrestored; seq orders the
// samples of all its metrics.
type kept struct {
	v   float64
	ts  int64
	seq uint64
}

// keptRing is one metric's kept samples: the last window of them.
type keptRing struct {
	vals []kept
	next int // oldest slot, next to overwrite once full
}

// replayed is a kept sample and its metric, for replay.
type replayed struct {
	metric string
	kept
}

// getDevice returns the device with hash h and ID id, creating it when
// unknown; with a Store, a new device starts loading and its ops wait.
func (sh *shard) getDevice(h uint64, id []byte) *device {
	s := sh.set
	d := sh.lookup(h, id)
	switch {
	case d == nil:
		d = sh.newDevice(string(id), h, sh.devices[h])
		sh.devices[h] = d
		sh.ndev++
		s.devices.Add(1)
		sh.added++
	case d.gone && sh.expired(d):
		sh.revive(d)
		sh.added++
	default:
		return d // held, or handed over (the caller checks gone)
	}
	d.touched = sh.now
	if s.opts.Store != nil {
		sh.startLoad(d, h, false)
	}
	return d
}

// startLoad asks the store for d. A first load parks d's ops until it
// answers; a retry (d unrestored, already serving) parks nothing.
func (sh *shard) startLoad(d *device, h uint64, retry bool) {
	if retry {
		d.retrying = true
		sh.set.retries.Add(1)
	} else {
		d.loading = true
	}
	sh.loading++
	d.loadSeq++
	id, ch, seq := d.id, sh.loaded, d.loadSeq
	sh.set.opts.Store.Load(id, func(snap *Snapshot, err error) {
		ch <- loadResult{hash: h, id: id, snap: snap, err: err, retry: retry, seq: seq}
	})
}

// touch marks d as changed at now (unix ns), the time the request that
// changed it arrived.
func (sh *shard) touch(d *device, now int64) {
	d.touched = max(d.touched, now)
	if !d.dirty && !d.unrestored && sh.set.opts.Store != nil && !sh.set.opts.LoadOnly {
		d.dirty = true
		sh.dirty = append(sh.dirty, d)
	}
}

// keep remembers a sample of an unrestored device to replay once the
// stored state can be loaded: each metric keeps its last window of samples
// (its own W), in O(1) per sample. One ring for the whole device, sized by
// one window, let a metric with a small window overwrite the samples of
// one with a large window (49 of 100 lost); sized by the largest window
// times the metrics, it held 19 times what the windows hold.
func (d *device) keep(st *namedStream, v float64, ts int64) {
	if d.replay == nil {
		d.replay = make(map[string]*keptRing)
	}
	r := d.replay[st.name]
	if r == nil {
		r = new(keptRing)
		d.replay[st.name] = r
	}
	d.rseq++
	k := kept{v, ts, d.rseq}
	if len(r.vals) < st.Win.Cap() {
		r.vals = append(r.vals, k)
		return
	}
	r.vals[r.next] = k
	r.next = (r.next + 1) % len(r.vals)
}

// replayed returns the kept samples of every metric in arrival order.
func (d *device) replayed() []replayed {
	var out []replayed
	for name, r := range d.replay {
		for _, k := range r.vals {
			out = append(out, replayed{name, k})
		}
	}
	slices.SortFunc(out, func(a, b replayed) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// onLoaded applies a finished load and runs the ops that waited for it.
func (sh *shard) onLoaded(l loadResult) {
	sh.loading--
	if l.retry {
		defer sh.set.retries.Add(-1) // after the device is reconciled
	}
	d := sh.lookup(l.hash, []byte(l.id))
	if d == nil || !d.loading && !d.retrying || l.seq != d.loadSeq {
		// Dropped meanwhile, or the load was abandoned (see abandon): a
		// late answer, which must not settle a newer load in its place.
		return
	}
	sh.settle(d, l.snap, l.err)
}

// errAbandoned settles a load the shard stopped waiting for.
var errAbandoned = errors.New("load abandoned at the stop deadline")

// abandon settles every first load still in flight as failed, so the
// samples and reads waiting for them run now (on fresh state, kept for
// replay: the device is unrestored until a retry reconciles it). Seal
// does this when its deadline passes; the loads' late answers are ignored.
//
// With o.all it also abandons retries in flight (the devices stay
// unrestored): Writer.Stop does this when it stops reconciling, so no retry
// can land after the final Collect, restoring and changing a device that
// no snapshot then holds.
func (sh *shard) abandon(o *op) {
	for _, first := range sh.devices {
		for d, next := first, (*device)(nil); d != nil; d = next {
			next = d.next // settle may drop d
			switch {
			case d.loading:
				sh.settle(d, nil, errAbandoned)
				o.started++
			case d.retrying && o.all:
				d.retrying = false
				d.loadSeq++ // its answer is now late
				o.started++
			}
		}
	}
}

// settle ends d's load with its result and runs the ops that waited.
func (sh *shard) settle(d *device, snap *Snapshot, err error) {
	d.loading, d.retrying = false, false
	s := sh.set
	if err != nil && !d.newer && errors.Is(err, ErrNewerVersion) {
		// A newer version saved it: no retry can load it; leave it alone.
		d.newer = true
		s.newer.Add(1)
	}
	switch {
	case err != nil && d.transient && len(d.streams) == 0 && !d.ingestWaiting():
		// A read at the device limit whose load failed: answered as
		// unknown and dropped below, not held past MAX_DEVICES as an
		// unrestored device for retries to restore.
	case err != nil && !d.unrestored && len(d.streams) == 0:
		// First load failed: serve fresh state, remember samples, retry
		// every second, and never persist this state meanwhile.
		d.unrestored = true
		s.unrestored.Add(1)
	case err != nil:
		// A retry failed: stay unrestored.
	default:
		if d.unrestored {
			d.unrestored = false
			s.unrestored.Add(-1)
		}
		if snap != nil {
			replay := d.replayed()
			s.streams.Add(-int64(len(d.streams)))
			sh.release(d)
			d.index, d.history, d.hnext = nil, nil, 0
			sh.restore(d, snap)
			for _, k := range replay {
				st := d.stream([]byte(k.metric), sh, len(d.streams)+1)
				sh.room(&st.Win)
				sc := st.Observe(k.v, k.ts, st.p)
				st.track()
				if sc.Alert {
					d.remember(Anomaly{Device: d.id, Metric: st.name, TS: k.ts, Value: k.v,
						Mean: sc.Mean, Stddev: sc.Stddev, Z: sc.Z, Reason: sc.Reason}, s.opts.HistoryLen)
				}
			}
			if len(replay) > 0 || snap.Unsaved {
				sh.touch(d, d.touched)
			}
		} else if len(d.streams) > 0 {
			sh.touch(d, d.touched) // nothing stored: the fresh state is the state
		}
		d.replay = nil
		sh.noteLoaded(d)
	}
	waiting := d.waiting
	d.waiting = nil
	for _, p := range waiting {
		if p.o.kind != opIngest {
			sh.answer(d, p.o)
			p.o.done.finish()
			continue
		}
		d.transient = false // samples arrived: keep it (devlimit.go)
		sh.apply(d, p.o, p.sample)
		if p.o.parked--; p.o.parked == 0 {
			p.o.done.finish()
		}
	}
	if d.transient {
		d.transient = false
		if !d.dirty && !d.unrestored && !d.gone {
			// Read at the limit: answered, not kept. Its published name
			// set, if full, goes to the away list (bounded by maxAway)
			// as an eviction's does, not left live for a device gone.
			sh.noteEvicted(d)
			sh.drop(d.hash, d, false)
			return
		}
	}
	if len(d.streams) == 0 && !d.unrestored && !d.dirty {
		// Only read, and the store has nothing. (A dirty one, a revived
		// tombstone, is in the persister's lists: eviction drops it.)
		sh.drop(d.hash, d, false)
	}
}

// ingestWaiting reports whether samples wait for d's load.
func (d *device) ingestWaiting() bool {
	for _, p := range d.waiting {
		if p.o.kind == opIngest {
			return true
		}
	}
	return false
}

// restore fills an empty device from a snapshot, with the detector
// settings the configuration gives each metric now.
func (sh *shard) restore(d *device, snap *Snapshot) {
	s := sh.set
	sh.restoring = true // publish a full device once, after (noteLoaded), not per stream
	defer func() { sh.restoring = false }()
	for i := range snap.Streams {
		ss := &snap.Streams[i]
		st := d.stream([]byte(ss.Name), sh, len(snap.Streams))
		sh.makeRoom(&st.Win, len(ss.Values))
		loadStream(&st.Stream, ss)
		st.track()
	}
	for _, a := range snap.History {
		d.remember(a, s.opts.HistoryLen)
	}
	d.gen = max(d.gen, snap.Gen)
}

// loadStream fills an empty stream from its snapshot.
func loadStream(st *detect.Stream, ss *StreamSnapshot) {
	st.Win.Load(ss.Values, ss.Sums)
	st.Count, st.Anomalies, st.Anomalous = ss.Count, ss.Anomalies, ss.Anomalous
	st.Last, st.LastZ, st.UpdatedTS = ss.Last, ss.LastZ, ss.UpdatedTS
	ds := detect.State{EWMean: ss.EWMean, EWVar: ss.EWVar, Step: ss.Step, Quiet: ss.Quiet, AlertZ: ss.AlertZ, CoolUntil: ss.CoolUntil}
	if ss.Ranges != nil {
		r := *ss.Ranges // the stream's own, not the snapshot's
		ds.Ranges = &r
	}
	st.SetState(ds)
}

// state copies st's scalars (not its window) for encoding.
func (st *namedStream) state() StreamSnapshot {
	ds := st.State()
	return StreamSnapshot{
		Name: st.name, Count: st.Count, Anomalies: st.Anomalies,
		Anomalous: st.Anomalous, Last: st.Last, LastZ: st.LastZ, UpdatedTS: st.UpdatedTS,
		EWMean: ds.EWMean, EWVar: ds.EWVar, Step: ds.Step, Quiet: ds.Quiet, AlertZ: ds.AlertZ, CoolUntil: ds.CoolUntil,
		Sums: st.Win.Sums(), Ranges: ds.Ranges,
	}
}

// encode writes d's snapshot straight from its state, without the copy
// snapshot makes: this runs on the shard goroutine for every changed device
// every interval. TestEncodeMatchesSnapshot checks it against encoding a
// copied Snapshot.
func (d *device) encode() []byte { return d.appendEncoded(make([]byte, 0, d.encodedSize())) }

// encodedSize is about the length of d's encoding.
func (d *device) encodedSize() int {
	n := 32 + len(d.id) + len(d.history)*48
	for i := range d.streams {
		n += 121 + len(d.streams[i].name) + 8*d.streams[i].Win.Len()
		if d.streams[i].State().Ranges != nil {
			n += detect.RangeStateSize
		}
	}
	return n
}

// appendEncoded appends d's encoding (see encode) to dst.
func (d *device) appendEncoded(dst []byte) []byte {
	dst = appendHeader(dst, d.id, d.gen, len(d.streams))
	for i := range d.streams {
		st := &d.streams[i]
		ss := st.state()
		older, newer := st.Win.Ring()
		dst = appendStream(dst, &ss, older, newer)
	}
	// The ring holds the oldest at hnext once full (hnext is 0 before).
	return appendHistory(dst, d.history[d.hnext:], d.history[:d.hnext])
}

// collect hands over copies of the devices changed since the last
// collect, and, at the start of a Collect, drops idle devices when asked.
//
// Eviction runs first, over devices that were already clean when this
// Collect began: their last state went out with an earlier Collect, which
// has returned, so the persister holds it (pending or written) and a
// reload cannot see anything older. A device encoded in this Collect is
// not evicted before the next: its copy reaches the persister only when
// Collect returns, and a reload in between read stale state from Redis.
func (sh *shard) collect(o *op) {
	began := time.Now()
	defer func() { o.busy = time.Since(began) }()
	if o.start {
		sh.scan(o.evict)
		o.snaps = append(o.snaps, sh.handedSnaps...)
		clear(sh.handedSnaps)
		sh.handedSnaps = sh.handedSnaps[:0]
		// Devices changed from now on wait for the next Collect, so a
		// busy fleet cannot keep this one going.
		// (Anything left from a Collect cut short by Stop goes too.)
		sh.collecting = append(sh.collecting, sh.dirty...)
		clear(sh.dirty)
		sh.dirty = sh.dirty[:0]
	}
	// One chunk per op: ingest ops queued meanwhile run between chunks
	// instead of waiting for every changed device to be encoded.
	n := min(len(sh.collecting), collectChunk)
	chunk := sh.collecting[len(sh.collecting)-n:]
	// This shard's buffer, reused chunk after chunk (see CollectEach).
	buf := o.bufs[sh.index][:0]
	need := 0
	for _, d := range chunk {
		need += d.encodedSize()
	}
	buf = slices.Grow(buf, need) // once, not as it fills
	// Each shard writes its own element: no race.
	defer func() { o.bufs[sh.index] = buf }()
	for _, d := range chunk {
		if d.dirty && !d.unrestored && !d.loading && !d.gone && len(d.streams) > 0 {
			d.gen++
			at := len(buf)
			buf = d.appendEncoded(buf)
			o.snaps = append(o.snaps, Encoded{Device: d.id, Data: buf[at:len(buf):len(buf)], Gen: d.gen})
			d.encodedAt = sh.now
		}
		d.dirty = false
	}
	clear(chunk)
	sh.collecting = sh.collecting[:len(sh.collecting)-n]
	o.more = len(sh.collecting) > 0
}

// scan drops unrestored devices that hold nothing, and, with evict, clean
// devices untouched for IdleEvict.
func (sh *shard) scan(evict bool) {
	idle := sh.now - int64(sh.set.opts.IdleEvict)
	// A snapshot encoded before stale may expire soon (Options.KeyTTL).
	stale := int64(math.MinInt64)
	if ttl := sh.set.opts.KeyTTL; ttl > 0 {
		stale = sh.now - int64(ttl) + int64(max(ttl-sh.set.opts.IdleEvict, 0)/2)
	}
	for h, first := range sh.devices {
		for d, next := first, (*device)(nil); d != nil; d = next {
			next = d.next // drop below gives d back for reuse
			switch {
			case d.loading || d.retrying:
			case d.gone:
				if sh.expired(d) && !d.dirty {
					sh.ngone--
					sh.set.tombs.Add(-1)
					sh.unlink(h, d)
					sh.freeDevice(d)
				}
			case d.unrestored && len(d.streams) == 0:
				sh.drop(h, d, false) // nothing to protect
			case evict && !d.unrestored && !d.dirty && d.touched < idle && d.encodedAt != 0 && d.encodedAt <= stale:
				sh.touch(d, d.touched) // written again this round, evicted by a later one
			case evict && !d.unrestored && !d.dirty && d.touched < idle:
				sh.drop(h, d, true)
			}
		}
	}
}

// retry starts loads for unrestored devices, at most maxRetries unless
// o.all, so they can be reconciled with what the store holds.
func (sh *shard) retry(o *op) {
	for h, first := range sh.devices {
		for d := first; d != nil; d = d.next {
			if !o.all && o.started >= maxRetries {
				return
			}
			if d.unrestored && !d.retrying && !d.loading && !d.newer {
				sh.startLoad(d, h, true)
				o.started++
			}
		}
	}
}

// collectChunk bounds the devices a shard encodes per collect op, so an
// ingest op waits behind at most one chunk: about 0.2 ms at the ~0.9 µs per
// device (2 metrics, W=50) that CPU profiles showed for encoding.
const collectChunk = 256

// maxRetries bounds the loads a shard retries per Retry, so an outage with
// many unrestored devices costs a trickle of probes, and their recovery is
// spread over a few calls.
const maxRetries = 256

// drop removes d, whose state the store already has or is being given, and
// gives it back to the shard's slabs: d must not be used after.
func (sh *shard) drop(h uint64, d *device, idle bool) {
	sh.unlink(h, d)
	sh.ndev--
	sh.set.devices.Add(-1)
	sh.set.streams.Add(-int64(len(d.streams)))
	if d.unrestored {
		sh.set.unrestored.Add(-1)
	}
	if d.newer {
		sh.set.newer.Add(-1)
	}
	if idle {
		sh.set.evicted.Add(1)
		sh.noteEvicted(d)
	}
	sh.freeDevice(d)
}

// unlink takes d out of the device map.
func (sh *shard) unlink(h uint64, d *device) {
	p := sh.devices[h]
	if p == d {
		if d.next == nil {
			delete(sh.devices, h)
		} else {
			sh.devices[h] = d.next
		}
	} else {
		for p.next != d {
			p = p.next
		}
		p.next = d.next
	}
}

// Encoded is one device's snapshot in the AppendBinary encoding.
type Encoded struct {
	Device string
	Data   []byte
	Gen    uint64 // the snapshot's Gen
}

// Collect returns copies of every device changed since the last call, for
// the persister to write. With evict, devices untouched for
// Options.IdleEvict are dropped from memory too, once their last changes
// have gone out in an earlier call.
//
// Each shard encodes collectChunk devices per message, so ingest runs
// between chunks; devices changed after Collect began wait for the next
// call. When the Set stops midway, what was taken is returned with the
// error: those devices are no longer marked changed.
func (s *Set) Collect(evict bool) ([]Encoded, error) {
	var out []Encoded
	_, err := s.CollectEach(evict, func(snaps []Encoded) bool {
		for _, e := range snaps {
			e.Data = slices.Clone(e.Data)
			out = append(out, e)
		}
		return true
	})
	return out, err
}

// CollectEach is Collect handing each chunk of snapshots to each, on the
// caller's goroutine, as the shards encode them: the persister writes a
// chunk while the shards go on, instead of holding a whole round's
// snapshots (a few KB a device) at once. The shards encode into buffers
// the next chunk reuses, so a snapshot's Data is valid only until each
// returns: each copies what it keeps, and returns false when something may
// still read the Data later (a write that timed out may yet be sent), so
// that the next chunk takes new memory. CollectEach returns the time the
// shards spent on it, summed: its cost to ingest, without the time its
// messages waited in the shards' queues behind requests. When the Set
// stops midway, each has had what was taken.
func (s *Set) CollectEach(evict bool, each func([]Encoded) bool) (time.Duration, error) {
	bufs := make([][]byte, len(s.shards)) // one per shard, reused chunk after chunk
	s.clock.Store(time.Now().UnixNano())
	var (
		busy  time.Duration
		snaps []Encoded
	)
	for o := (op{kind: opCollect, evict: evict, start: true, bufs: bufs}); ; o.start = false {
		ops, err := s.broadcast(o)
		if err != nil {
			return busy, err // what was taken is no longer dirty: each had it
		}
		more := false
		snaps = snaps[:0]
		for i := range ops {
			snaps = append(snaps, ops[i].snaps...)
			more = more || ops[i].more
			busy += ops[i].busy
		}
		if len(snaps) > 0 && !each(snaps) {
			clear(bufs) // still in use: the shards start new ones
		}
		if !more {
			return busy, nil
		}
	}
}

// Retry starts new loads of devices whose load failed (see Unrestored):
// up to 256 per shard, or all of them with all. Once a load succeeds, the
// samples the device took meanwhile are replayed onto the stored state and
// the device is marked changed, for the next Collect. It returns how many
// loads it started; Retrying tells how many are still in flight.
func (s *Set) Retry(all bool) (int, error) {
	ops, err := s.broadcast(op{kind: opRetry, all: all})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range ops {
		n += ops[i].started
	}
	return n, nil
}

// AbandonRetries stops waiting for the loads Retry started: their devices
// stay unrestored, and the answers, when they come, are ignored. A stop
// calls it before its final Collect, so no retry can land after it.
func (s *Set) AbandonRetries() error {
	_, err := s.broadcast(op{kind: opAbandon, all: true})
	return err
}

// Newer returns how many unrestored devices were saved by a newer version
// of the service: they are never retried, nor written over.
func (s *Set) Newer() int { return int(s.newer.Load()) }

// Retrying returns how many loads started by Retry have not finished.
func (s *Set) Retrying() int { return int(s.retries.Load()) }

// Unrestored returns how many devices run on fresh state because their
// load failed.
func (s *Set) Unrestored() int { return int(s.unrestored.Load()) }

// Evicted returns how many idle devices were dropped from memory.
func (s *Set) Evicted() uint64 { return s.evicted.Load() }
