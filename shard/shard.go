// Package shard owns the devices' state: N goroutines, each of which alone
// holds the windows of the devices whose IDs hash to it. Other code talks to
// a shard only through its inbox, so no lock guards device state.
package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"path"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"ai-load-service/shard/detect"
)

// Options configure a Set. A zero field means the default in its comment.
type Options struct {
	Shards     int         // number of shard goroutines; zero: 4 × GOMAXPROCS
	Detector   detect.Kind // zero: detect.DefaultKind
	WindowSize int         // values per stream window; zero: 50
	MinSamples int         // zero: 10, or WindowSize when smaller
	ZThreshold float64     // zero: detect.DefaultThreshold
	MinStddev  float64     // zero: 1e-9
	Cooldown   int         // samples of alert cooldown; zero: detect.DefaultCooldown; negative: none
	// CooldownTime is a cooldown in time (of the samples' ts) beside
	// Cooldown's; zero: none. Whole milliseconds.
	CooldownTime time.Duration
	StepFloor    float64 // see detect.Params.StepFloor; zero: detect.DefaultStepFloor; negative: none
	// Rules override the detector for matching metric names; the first
	// match wins, other metrics use the settings above.
	Rules []detect.Rule
	// Store, when set, makes the Set durable: unknown devices are loaded
	// from it on first use, and Collect hands changed state to the caller.
	Store Store
	// IdleEvict is how long a device may go untouched before Collect with
	// evict drops it from memory; zero: 15 minutes.
	IdleEvict time.Duration
	// KeyTTL is how long what the Store's writer writes lives (Redis's
	// SNAPSHOT_TTL): eviction writes a device again, rather than drop it,
	// when its last snapshot may expire within (KeyTTL - IdleEvict) / 2.
	// Rounds that come late (a Redis stall, a round longer than the
	// period) would otherwise drop the only copy. Zero: the Store's
	// KeyTTL() if it has one, else no check.
	KeyTTL     time.Duration
	QueueLen   int // requests waiting per shard before Ingest fails fast; zero: 1024
	HistoryLen int // anomalies remembered per device; zero: 100
	// MaxStreams is how many metric names a device may have; a request
	// naming a new metric for a device that has them all is refused with
	// ErrTooManyStreams. Zero: DefaultMaxStreams.
	MaxStreams int
	// MaxDevices bounds the devices held (ErrTooManyDevices beyond; see
	// devlimit.go). Zero: DefaultMaxDevices.
	MaxDevices int
	// LoadOnly says Store only loads (a cluster member without
	// persistence, whose store asks the other members): changes are not
	// tracked for Collect, which nobody calls.
	LoadOnly bool
	// Tombstone is how long a device handed over to another member (see
	// HandOff) is remembered; zero: one minute.
	Tombstone time.Duration
}

// DefaultMaxStreams bounds a device's metric names: far above what devices
// send, low enough that one inventing names cannot take much memory (W=50:
// ~200 KB). The detector defaults are detect's (detect.DefaultKind etc.).
const DefaultMaxStreams = 256

func (o Options) withDefaults() Options {
	if o.Shards <= 0 {
		o.Shards = 4 * runtime.GOMAXPROCS(0)
	}
	if o.Detector == 0 {
		o.Detector = detect.DefaultKind
	}
	switch {
	case o.Cooldown == 0:
		o.Cooldown = detect.DefaultCooldown
	case o.Cooldown < 0:
		o.Cooldown = 0
	}
	switch {
	case o.StepFloor == 0:
		o.StepFloor = detect.DefaultStepFloor
	case o.StepFloor < 0:
		o.StepFloor = 0
	}
	if o.WindowSize <= 0 {
		o.WindowSize = 50
	}
	if o.MinSamples <= 0 {
		o.MinSamples = min(10, o.WindowSize)
	}
	if o.ZThreshold <= 0 {
		o.ZThreshold = detect.DefaultThreshold
	}
	if o.MinStddev <= 0 {
		o.MinStddev = 1e-9
	}
	if o.IdleEvict <= 0 {
		o.IdleEvict = 15 * time.Minute
	}
	if t, ok := o.Store.(interface{ KeyTTL() time.Duration }); ok && o.KeyTTL <= 0 {
		o.KeyTTL = t.KeyTTL()
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 1024
	}
	if o.HistoryLen <= 0 {
		o.HistoryLen = 100
	}
	if o.MaxDevices <= 0 {
		o.MaxDevices = DefaultMaxDevices
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Tombstone <= 0 {
		o.Tombstone = time.Minute
	}
	return o
}

// Validate reports settings New would reject.
func (o Options) Validate() error { return o.withDefaults().validate() }

func (o Options) validate() error {
	p := detect.Params{Kind: o.Detector, Window: o.WindowSize, MinSamples: o.MinSamples,
		Threshold: o.ZThreshold, MinStddev: o.MinStddev, Cooldown: o.Cooldown, StepFloor: o.StepFloor, CooldownMs: o.CooldownTime.Milliseconds()}
	if err := p.Validate(); err != nil {
		return err
	}
	if o.MaxStreams > MaxStreamsLimit {
		return fmt.Errorf("max streams per device %d: want 1 to %d", o.MaxStreams, MaxStreamsLimit)
	}
	for i := range o.Rules {
		if err := o.Rules[i].Params.Validate(); err != nil {
			return fmt.Errorf("rule %d (match %q): %w", i+1, o.Rules[i].Match, err)
		}
	}
	return nil
}

// MaxStreamsLimit is the largest Options.MaxStreams.
const MaxStreamsLimit = 1 << 16

var (
	// ErrOverloaded means a shard's queue was full; nothing was applied.
	ErrOverloaded = errors.New("ingest queue is full")
	// ErrStopped means the Set was stopped; nothing was applied.
	ErrStopped = errors.New("shards are stopped")
	// ErrTooManyStreams means a sample named a metric new to a device that
	// has Options.MaxStreams already; nothing was applied. The error is a
	// *StreamLimitError.
	ErrTooManyStreams = errors.New("too many metrics for one device")
)

// StreamLimitError names the device and metric a request was refused for.
type StreamLimitError struct {
	Device, Metric string
	Limit          int
	Index          int // the sample's index in its batch
}

func (e *StreamLimitError) Error() string {
	return fmt.Sprintf("device %q may have at most %d metrics and sample %d names one more, %q",
		e.Device, e.Limit, e.Index, e.Metric)
}

func (e *StreamLimitError) Unwrap() error { return ErrTooManyStreams }

// Anomaly is one anomalous sample: its value and the window it was scored
// against (mean and stddev before the value entered).
type Anomaly struct {
	Device, Metric         string
	TS                     int64 // unix ms
	Value, Mean, Stddev, Z float64
	Reason                 detect.Reason // the test that raised it; ReasonNone in alerts restored from version 3 snapshots

	sample int32 // index in its batch, to restore sample order
}

// Sample returns the index, in the batch that raised it, of the sample a
// was raised for (in Batch.Anomalies; zero in a device's history).
func (a *Anomaly) Sample() int { return int(a.sample) }

// MetricState is one stream as the device route shows it.
type MetricState struct {
	Name      string
	Count     uint64 // samples since the stream was first seen
	Window    int    // values in the window now
	Mean      float64
	Stddev    float64
	Last      float64
	LastZ     float64
	Anomalies uint64 // alerts since the stream was first seen
	Anomalous uint64 // anomalous samples since then, alerted or not
	UpdatedTS int64
	Detector  detect.Kind
}

// Set is N shards and the hash that picks one for a device ID.
type Set struct {
	opts   Options
	params detect.Params
	seed   maphash.Seed
	shards []*shard
	// nfull counts devices at their stream limit, across shards: while it
	// is zero, Ingest checks nothing (see checkFull).
	nfull    atomic.Int64
	wg       sync.WaitGroup
	devices  atomic.Int64 // devices held, across shards
	reserved atomic.Int64 // room for devices requests in flight may add (see devlimit.go)
	streams  atomic.Int64 // streams held, across shards

	clock      atomic.Int64 // unix ns, advanced by Collect: the idle-eviction clock
	unrestored atomic.Int64
	retries    atomic.Int64 // retried loads of unrestored devices in flight
	newer      atomic.Int64 // unrestored devices a newer version saved
	evicted    atomic.Uint64
	tombs      atomic.Int64 // devices handed over, remembered (see HandOff)

	// clients counts Ingest, Device, Anomalies and Summarize calls from
	// admission until they return, so Seal can wait for every admitted
	// request to be applied; sends counts the persister's calls (Collect,
	// Retry) until their ops are queued, so Stop closes the inboxes only
	// after the last send.
	clients  atomic.Int64
	sends    atomic.Int64
	sealed   atomic.Bool // clients are refused with ErrStopped
	stopping atomic.Bool // everyone is refused; the inboxes close
}

// New starts the shard goroutines. Call Stop to end them. It panics on
// invalid settings: validate them first with Options.Validate.
func New(opts Options) *Set {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		panic(fmt.Errorf("BUG: shard.New: %w", err))
	}
	s := &Set{
		opts: opts,
		params: detect.Params{Kind: opts.Detector, Window: opts.WindowSize, MinSamples: opts.MinSamples,
			Threshold: opts.ZThreshold, MinStddev: opts.MinStddev, Cooldown: opts.Cooldown, StepFloor: opts.StepFloor,
			CooldownMs: opts.CooldownTime.Milliseconds()},
		seed:   maphash.MakeSeed(),
		shards: make([]*shard, opts.Shards),
	}
	s.clock.Store(time.Now().UnixNano())
	for i := range s.shards {
		sh := &shard{
			set:     s,
			index:   i,
			inbox:   make(chan *op, opts.QueueLen),
			limit:   int32(opts.QueueLen),
			devices: make(map[uint64]*device),
			names:   make(map[string]*nameAgg),
			loaded:  make(chan loadResult, 64),
		}
		s.shards[i] = sh
		s.wg.Add(1)
		go sh.run(&s.wg)
	}
	return s
}

// Seal refuses new Ingest, Device, Anomalies and Summarize calls with
// ErrStopped and waits until every call admitted before has returned, so
// that a final Collect holds everything a client was told was applied.
// Collect and Retry keep working until Stop. It returns ctx's error if
// calls are still running when ctx ends (a sample waiting for a load that
// does not answer).
//
// When ctx ends first, Seal stops waiting for the loads those calls wait
// on: their devices serve fresh state, unrestored (counted by Unrestored,
// kept for replay until a Retry reconciles them), the calls finish, and
// Seal returns an error saying how many were cut short. Either way, when
// Seal returns no admitted call is still running: a request answered
// after a final Collect is never one that Collect missed unless its device
// is counted unrestored.
func (s *Set) Seal(ctx context.Context) error {
	s.sealed.Store(true)
	if s.waitClients(ctx) {
		return nil
	}
	waiting := s.clients.Load()
	abandoned := 0
	for s.clients.Load() != 0 {
		ops, err := s.broadcast(op{kind: opAbandon})
		if err != nil {
			break // stopped: nothing is waiting any more
		}
		for i := range ops {
			abandoned += ops[i].started
		}
		wait, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		s.waitClients(wait)
		cancel()
	}
	return fmt.Errorf("%d requests still waited for device loads: %d loads abandoned, their devices unrestored: %w",
		waiting, abandoned, ctx.Err())
}

// waitClients waits until no client call is running, or until ctx ends.
func (s *Set) waitClients(ctx context.Context) bool {
	for s.clients.Load() != 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Millisecond):
		}
	}
	return true
}

// Stop seals the Set, waits for every admitted call, then ends the shard
// goroutines. Later calls fail with ErrStopped.
func (s *Set) Stop() {
	_ = s.Seal(context.Background())
	if s.stopping.Swap(true) {
		return
	}
	for s.sends.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	for _, sh := range s.shards {
		close(sh.inbox)
	}
	s.wg.Wait()
}

// Options returns the options in effect, defaults filled in.
func (s *Set) Options() Options { return s.opts }

// Devices returns the number of devices held in memory.
func (s *Set) Devices() int { return int(s.devices.Load()) }

// Streams returns the number of (device, metric) streams held in memory.
func (s *Set) Streams() int { return int(s.streams.Load()) }

// QueueDepth returns the requests waiting in or being handled by shard i.
func (s *Set) QueueDepth(i int) int { return int(s.shards[i].pending.Load()) }

// Len returns the number of shards.
func (s *Set) Len() int { return len(s.shards) }

// ShardOf returns the shard that owns device.
func (s *Set) ShardOf(device []byte) int { return s.shardOfHash(maphash.Bytes(s.seed, device)) }

func (s *Set) shardOfHash(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(s.shards)))
	return int(hi)
}

// admit counts a client call in, unless the Set is sealed; a true answer
// must be matched by a done call once the call has its answer.
func (s *Set) admit() bool {
	s.clients.Add(1)
	if s.sealed.Load() {
		s.clients.Add(-1)
		return false
	}
	return true
}

func (s *Set) done() { s.clients.Add(-1) }

// enter counts a persister call in until its ops are sent (leave).
func (s *Set) enter() bool {
	s.sends.Add(1)
	if s.stopping.Load() {
		s.sends.Add(-1)
		return false
	}
	return true
}

func (s *Set) leave() { s.sends.Add(-1) }

// Ingest applies every sample in b, one message per shard involved, and
// fills b.Anomalies. It fails without applying anything when a shard's
// queue is full (ErrOverloaded) or the Set is stopped (ErrStopped).
func (s *Set) Ingest(b *Batch) error {
	if !s.admit() {
		return ErrStopped
	}
	defer s.done()
	if b.received == 0 {
		b.received = time.Now().UnixNano()
	}
	n := len(s.shards)
	b.counts = slices.Grow(b.counts[:0], n)[:n]
	clear(b.counts)
	for i := range b.samples {
		smp := &b.samples[i]
		smp.hash = maphash.Bytes(s.seed, b.bytes(smp.dev))
		smp.shard = int32(s.shardOfHash(smp.hash))
		b.counts[smp.shard]++
	}
	if err := s.checkLimits(b); err != nil {
		return err
	}
	// Counting sort of the sample indices by shard, batch order inside.
	b.order = slices.Grow(b.order[:0], len(b.samples))[:len(b.samples)]
	if len(b.ops) < n {
		b.ops = make([]op, n)
	}
	off := int32(0)
	for k, c := range b.counts {
		o := &b.ops[k]
		o.idx = b.order[off : off : off+c]
		off += c
	}
	for i := range b.samples {
		o := &b.ops[b.samples[i].shard]
		o.idx = append(o.idx, int32(i))
	}
	if err := s.reserveDevices(b); err != nil {
		return err
	}
	defer s.releaseDevices(b)
	if err := s.dispatch(b, opIngest); err != nil {
		return err
	}

	b.Anomalies = b.Anomalies[:0]
	b.Anomalous = 0
	b.moved = b.moved[:0]
	b.applied = 0
	for k, c := range b.counts {
		// Ops of shards this batch did not touch hold an earlier
		// request's results: a pooled Batch reuses them.
		if c == 0 {
			continue
		}
		b.Anomalous += b.ops[k].anomalous
		b.Anomalies = append(b.Anomalies, b.ops[k].out...)
		b.moved = append(b.moved, b.ops[k].moved...)
		b.applied += b.ops[k].applied
		b.ops[k].b = nil
	}
	if len(b.moved) > 0 {
		slices.SortFunc(b.moved, func(x, y Moved) int { return x.Sample - y.Sample })
	}
	// Each shard's list is in sample order unless a sample waited for its
	// device to load and ran after later ones; several shards interleave.
	// Sorting only when needed keeps the common case a linear check.
	if !slices.IsSortedFunc(b.Anomalies, bySample) {
		slices.SortStableFunc(b.Anomalies, bySample)
	}
	return nil
}

func bySample(x, y Anomaly) int { return int(x.sample - y.sample) }

// dispatch sends each shard its part of b (b.ops, sorted by Ingest) as an
// op of kind, and waits for them all. A place in every shard's queue is
// reserved first, so that a full one leaves the batch wholly unsent.
func (s *Set) dispatch(b *Batch, kind opKind) error {
	for k, c := range b.counts {
		if c > 0 && !s.shards[k].acquire() {
			for j := range k {
				if b.counts[j] > 0 {
					s.shards[j].pending.Add(-1)
				}
			}
			return ErrOverloaded
		}
	}
	for k, c := range b.counts {
		if c == 0 {
			continue
		}
		o := &b.ops[k]
		o.kind, o.b, o.done, o.out, o.anomalous = kind, b, &b.done, o.out[:0], 0
		o.moved, o.applied = o.moved[:0], 0
		b.done.add(1) // every add before the first send
	}
	for k, c := range b.counts {
		if c > 0 {
			s.shards[k].inbox <- &b.ops[k]
		}
	}
	b.done.wait()
	return nil
}

// Device returns the state of device's streams in first-seen order, or
// false when the device is unknown.
func (s *Set) Device(id string) ([]MetricState, bool, error) {
	o, err := s.ask(opDevice, id)
	if err != nil {
		return nil, false, err
	}
	if o.handed.MovedTo != "" {
		return nil, false, &MovedError{id, o.handed.MovedTo}
	}
	return o.metrics, o.found, nil
}

// Held reports whether device is in memory here: a cluster member applies a
// forwarded sample for a device it does not own only if it holds it (its
// view lags the sender's). Unlike Device, it never loads the device.
// movedTo names the member it was handed to, if it was (see HandOff).
func (s *Set) Held(id string) (held bool, movedTo string, err error) {
	o, err := s.ask(opHeld, id)
	if err != nil {
		return false, "", err
	}
	return o.found, o.handed.MovedTo, nil
}

// Anomalies returns device's most recent anomalies, newest first, or false
// when the device is unknown.
func (s *Set) Anomalies(id string) ([]Anomaly, bool, error) {
	o, err := s.ask(opAnomalies, id)
	if err != nil {
		return nil, false, err
	}
	if o.handed.MovedTo != "" {
		return nil, false, &MovedError{id, o.handed.MovedTo}
	}
	return o.out, o.found, nil
}

// ask sends one read to the shard owning id and waits for the answer.
// Reads wait for a queue place rather than fail: they are few and small.
func (s *Set) ask(kind opKind, id string) (*op, error) {
	if !s.admit() {
		return nil, ErrStopped
	}
	defer s.done()
	o := &op{kind: kind, id: id, done: new(latch)}
	o.done.add(1)
	sh := s.shards[s.ShardOf([]byte(id))]
	o.hash = maphash.String(s.seed, id)
	sh.pending.Add(1)
	sh.inbox <- o
	o.done.wait()
	return o, nil
}

// Summary describes every stream held, for the /analyze route and the
// per-metric gauges.
type Summary struct {
	Devices   int
	Streams   int
	Samples   uint64 // samples seen, summed over the streams held
	Anomalies uint64 // anomalies, summed over the streams held
	Values    int    // values in all windows
	Mean      float64
	Stddev    float64 // population stddev of all window values
	Min, Max  float64
}

// Merge adds o, a summary of other streams (another cluster member's), to s.
func (s *Summary) Merge(o Summary) {
	if o.Values > 0 {
		if s.Values == 0 {
			s.Min, s.Max = o.Min, o.Max
		}
		s.Min, s.Max = math.Min(s.Min, o.Min), math.Max(s.Max, o.Max)
		m := moments{n: float64(s.Values), mean: s.Mean, v: s.Stddev * s.Stddev}
		m.merge(moments{n: float64(o.Values), mean: o.Mean, v: o.Stddev * o.Stddev})
		s.Mean, s.Stddev = m.mean, m.stddev()
	}
	s.Devices += o.Devices
	s.Streams += o.Streams
	s.Samples += o.Samples
	s.Anomalies += o.Anomalies
	s.Values += o.Values
}

// MetricSummary aggregates the streams of one metric name.
type MetricSummary struct {
	Streams int
	Mean    float64 // mean of the streams' rolling averages
}

// MetricMeans returns, per metric name, how many streams there are and the
// mean of their rolling averages. Shards keep these sums as samples arrive,
// so it costs O(metric names), not O(values): what a /metrics scrape needs
// (walking every window blocked the shards for 35-40 ms at 100k streams).
func (s *Set) MetricMeans() (map[string]MetricSummary, error) {
	if !s.admit() {
		return nil, ErrStopped
	}
	defer s.done()
	ops, err := s.broadcast(op{kind: opNames})
	if err != nil {
		return nil, err
	}
	type total struct {
		streams int
		sum     nameAgg
	}
	all := make(map[string]*total)
	for i := range ops {
		for name, a := range ops[i].names {
			t := all[name]
			if t == nil {
				t = new(total)
				all[name] = t
			}
			t.streams += a.streams
			t.sum.add(a.sum)
			t.sum.add(a.c)
		}
	}
	out := make(map[string]MetricSummary, len(all))
	for name, t := range all {
		out[name] = MetricSummary{Streams: t.streams, Mean: t.sum.total() / float64(t.streams)}
	}
	return out, nil
}

// Summarize asks every shard for its part and merges them. It costs one
// pass over all window values (for the minimum and maximum), so it is for
// people and dashboards, not for every scrape.
func (s *Set) Summarize() (Summary, error) {
	if !s.admit() {
		return Summary{}, ErrStopped
	}
	defer s.done()
	ops, err := s.broadcast(op{kind: opSummary})
	if err != nil {
		return Summary{}, err
	}
	var sum Summary
	var m moments
	sum.Min, sum.Max = math.Inf(1), math.Inf(-1)
	for i := range ops {
		p := &ops[i].sum
		sum.Devices += p.Devices
		sum.Streams += p.Streams
		sum.Samples += p.Samples
		sum.Anomalies += p.Anomalies
		sum.Min = math.Min(sum.Min, p.Min)
		sum.Max = math.Max(sum.Max, p.Max)
		m.merge(ops[i].mom)
	}
	if m.n == 0 {
		sum.Min, sum.Max = 0, 0
	}
	sum.Values = int(m.n)
	sum.Mean, sum.Stddev = m.mean, m.stddev()
	return sum, nil
}

// broadcast sends a copy of o to every shard and waits for all of them.
// Like reads, it waits for a queue place rather than failing.
func (s *Set) broadcast(o op) ([]op, error) {
	if !s.enter() {
		return nil, ErrStopped
	}
	done := new(latch)
	done.add(int32(len(s.shards)))
	ops := make([]op, len(s.shards))
	for i, sh := range s.shards {
		ops[i] = o
		ops[i].done = done
		sh.pending.Add(1)
		sh.inbox <- &ops[i]
	}
	s.leave()
	done.wait()
	return ops, nil
}

// moments merges counts, means and population variances stably (Chan et
// al.). It keeps the variance rather than the sum of squared deviations,
// and scales by the shares before multiplying: with values near the 1e150
// the API allows, d²·n_a·n_b overflowed and /analyze showed std_dev null.
type moments struct{ n, mean, v float64 }

func (a *moments) merge(b moments) {
	if b.n == 0 {
		return
	}
	n := a.n + b.n
	fa, fb := a.n/n, b.n/n
	d := b.mean - a.mean
	a.mean += d * fb
	a.v = a.v*fa + b.v*fb + d*fa*(d*fb)
	a.n = n
}

func (a *moments) stddev() float64 { return math.Sqrt(math.Max(a.v, 0)) }

type opKind uint8

const (
	opIngest opKind = iota
	opDevice
	opAnomalies
	opSummary
	opCollect
	opRetry
	opNames
	opAbandon
	opHeld
	opHandoff
	opSweep
	opList
	opForget
	opProbe
)

// op is one message to a shard. The sender owns it again once done has
// counted it.
type op struct {
	kind opKind
	done *latch

	b   *Batch  // opIngest
	idx []int32 // opIngest: b's samples owned by this shard, in order
	out []Anomaly
	// anomalous counts opIngest's anomalous samples, alerted or not
	anomalous int
	parked    int // samples waiting for their device to load
	moved     []Moved
	applied   int // metric values applied
	fresh     int // opProbe: devices of its samples not held

	id      string // opDevice, opAnomalies
	hash    uint64 // of id
	found   bool
	metrics []MetricState
	sum     Summary
	mom     moments
	names   map[string]nameAgg // opNames
	snaps   []Encoded          // opCollect
	bufs    [][]byte           // opCollect: each shard's buffer, at its index
	evict   bool               // opCollect: also drop idle devices
	start   bool               // opCollect: the first of a Collect's ops
	more    bool               // opCollect: devices are left for the next op
	busy    time.Duration      // opCollect: time the shard spent on it (not queued)
	all     bool               // opRetry: every unrestored device, not a trickle
	started int                // opRetry: loads started
	to      string             // opHandoff: the member taking the device
	token   uint64             // opHandoff: the taker's load
	handed  Handed             // opHandoff; MovedTo also for reads
	ids     []string           // opList; opForget: nil for all
	members []string           // opForget
}

type shard struct {
	set     *Set
	index   int // in set.shards
	inbox   chan *op
	pending atomic.Int32 // ops reserved or queued, not yet taken; ≤ limit for ingest
	limit   int32

	// devices is keyed by the device ID's hash, already computed to pick
	// the shard; IDs whose hashes collide are chained through device.next.
	devices   map[uint64]*device // owned by run alone
	ndev      int
	added     int64               // devices created or revived, ever: Ingest's ops report their own to the Set (devlimit.go)
	names     map[string]*nameAgg // per metric name; owned by run alone
	full      fullSet             // devices at their stream limit
	ngone     int                 // tombstones among devices (see HandOff)
	restoring bool                // restore is adding a device's streams
	devs      []*device           // ingest scratch
	// What devices are made of, dense and reused (see slabs).
	deviceSlab   slabs[device]
	streamArrays slabs[namedStream]
	rings        slabs[float64]

	// Durable mode (Options.Store); all owned by run alone but loaded,
	// which the store's goroutines send on.
	loaded  chan loadResult
	loading int       // devices waiting for a load
	dirty   []*device // devices changed since the last collect
	// collecting is what was dirty when the current Collect began, taken a
	// chunk per op.
	collecting []*device
	// handedSnaps are the states handed over since the last Collect, for
	// it to write (see handoff).
	handedSnaps []Encoded
	now         int64 // Set.clock when the current op started, unix ns
}

func (sh *shard) acquire() bool {
	if sh.pending.Add(1) > sh.limit {
		sh.pending.Add(-1)
		return false
	}
	return true
}

func (sh *shard) run(wg *sync.WaitGroup) {
	defer wg.Done()
	inbox := sh.inbox
	for inbox != nil || sh.loading > 0 {
		var o *op
		ok := true
		if sh.loading == 0 {
			// Nothing can arrive on loaded, and a plain receive parks
			// for less than a select.
			o, ok = <-inbox
		} else {
			select {
			case o, ok = <-inbox:
			case l := <-sh.loaded:
				sh.onLoaded(l)
				continue
			}
		}
		if !ok {
			inbox = nil // stopped: finish the loads in flight, then return
			continue
		}
		sh.pending.Add(-1)
		sh.now = sh.set.clock.Load()
		if o.kind == opIngest {
			sh.now = o.b.received
		}
		if sh.handle(o) {
			o.done.finish()
		}
	}
}

// handle runs o and reports whether it is finished; an op that waits for a
// device being loaded finishes later, from onLoaded.
func (sh *shard) handle(o *op) bool {
	switch o.kind {
	case opIngest:
		return sh.ingest(o)
	case opDevice, opAnomalies:
		return sh.read(o)
	case opHeld:
		d := sh.lookup(o.hash, []byte(o.id))
		o.found = d != nil && !d.loading && !d.gone
		if d != nil && d.gone && !sh.expired(d) {
			o.handed.MovedTo = d.to
		}
	case opHandoff:
		sh.handoff(o)
	case opSweep:
		sh.sweep()
	case opList:
		sh.list(o)
	case opForget:
		sh.forget(o)
	case opProbe:
		sh.probe(o)

	case opSummary:
		sh.summarize(o)
	case opNames:
		sh.copyNames(o)
	case opCollect:
		sh.collect(o)
	case opRetry:
		sh.retry(o)
	case opAbandon:
		sh.abandon(o)
	}
	return true
}

func (sh *shard) ingest(o *op) bool {
	b := o.b
	// Resolve every device first: the lookups are independent, so the CPU
	// overlaps their cache misses instead of taking them one by one.
	devs := sh.devs[:0]
	added := sh.added
	for _, i := range o.idx {
		smp := &b.samples[i]
		devs = append(devs, sh.getDevice(smp.hash, b.bytes(smp.dev)))
	}
	sh.set.took(b, sh.added-added)
	o.parked = 0
	for k, i := range o.idx {
		d := devs[k]
		if d.gone {
			o.moved = append(o.moved, Moved{int(i), d.to})
			continue
		}
		if d.loading {
			d.waiting = append(d.waiting, parked{o: o, sample: i})
			o.parked++
			continue
		}
		sh.apply(d, o, i)
	}
	clear(devs)
	sh.devs = devs[:0]
	return o.parked == 0
}

// apply runs sample i of o's batch through d's streams.
func (sh *shard) apply(d *device, o *op, i int32) {
	b, s := o.b, sh.set
	smp := &b.samples[i]
	o.applied += int(smp.ms.hi - smp.ms.lo)
	sh.touch(d, b.received)
	for j := smp.ms.lo; j < smp.ms.hi; j++ {
		m := &b.metrics[j]
		name := b.bytes(m.name)
		st := d.find(name)
		if st == nil {
			st = d.add(name, sh, len(d.streams)+d.missing(b, j, smp.ms.hi))
		}
		if w, r := &st.Win, st.Win.Buf(); cap(r) < w.Cap() && len(r) == cap(r) {
			sh.makeRoom(w, len(r)+1) // see room
		}
		sc := st.Observe(m.v, smp.ts, st.p)
		st.track()
		if d.unrestored {
			d.keep(st, m.v, smp.ts)
		}
		if i == 0 && j == smp.ms.lo {
			mean, _ := st.Win.Stats()
			b.Head = StreamHead{Window: st.Win.Len(), Size: st.Win.Cap(), Mean: mean}
		}
		if sc.Anomalous {
			o.anomalous++
		}
		if sc.Alert {
			a := Anomaly{Device: d.id, Metric: st.name, TS: smp.ts, Value: m.v,
				Mean: sc.Mean, Stddev: sc.Stddev, Z: sc.Z, Reason: sc.Reason, sample: i}
			o.out = append(o.out, a)
			d.remember(a, s.opts.HistoryLen)
		}
	}
}

// lookup finds the device with ID id and hash h, or nil.
func (sh *shard) lookup(h uint64, id []byte) *device {
	d := sh.devices[h]
	for d != nil && !d.is(id) {
		d = d.next
	}
	return d
}

// read answers opDevice and opAnomalies; an unknown device is loaded from
// the store first when there is one.
func (sh *shard) read(o *op) bool {
	d := sh.lookup(o.hash, []byte(o.id))
	if d == nil && sh.set.opts.Store != nil || d != nil && d.gone && sh.expired(d) {
		s := sh.set
		// At the device limit a read still loads the device to answer,
		// but does not keep it (devlimit.go).
		full := s.devices.Load()+s.reserved.Load() >= int64(s.opts.MaxDevices)
		d = sh.getDevice(o.hash, []byte(o.id))
		d.transient = full && d.loading
	}
	if d != nil && d.gone {
		o.handed.MovedTo = d.to
		return true
	}
	if d != nil && d.loading {
		d.waiting = append(d.waiting, parked{o: o})
		return false
	}
	sh.answer(d, o)
	return true
}

func (sh *shard) answer(d *device, o *op) {
	if d == nil || len(d.streams) == 0 {
		return // unknown, or loaded from a store that had nothing
	}
	o.found = true
	if o.kind == opAnomalies {
		o.out = d.recent()
		return
	}
	o.metrics = make([]MetricState, len(d.streams))
	for i := range d.streams {
		st := &d.streams[i]
		mean, sd := st.Win.Stats()
		o.metrics[i] = MetricState{Name: st.name, Count: st.Count, Window: st.Win.Len(),
			Mean: mean, Stddev: sd, Last: st.Last, LastZ: st.LastZ,
			Anomalies: st.Anomalies, Anomalous: st.Anomalous, UpdatedTS: st.UpdatedTS, Detector: st.p.Kind}
	}
}

func (sh *shard) summarize(o *op) {
	p := &o.sum
	p.Devices = sh.ndev
	p.Min, p.Max = math.Inf(1), math.Inf(-1)
	for _, d := range sh.devices {
		for ; d != nil; d = d.next {
			sh.summarizeDevice(d, o)
		}
	}
}

func (sh *shard) summarizeDevice(d *device, o *op) {
	p := &o.sum
	for i := range d.streams {
		st := &d.streams[i]
		p.Streams++
		p.Samples += st.Count
		p.Anomalies += st.Anomalies
		n := st.Win.Len()
		if n == 0 {
			continue
		}
		mean, sd := st.Win.Stats()
		o.mom.merge(moments{n: float64(n), mean: mean, v: sd * sd})
		lo, hi := st.Win.MinMax()
		p.Min, p.Max = math.Min(p.Min, lo), math.Max(p.Max, hi)
	}
}

// nameAgg is one metric name's streams in a shard: how many, and the sum of
// their window means, kept as samples arrive (see namedStream.track) so a
// scrape costs O(names). The sum is compensated (Neumaier), and each
// change is added as the difference of two means, whose rounding is at
// most half an ulp of the difference: mag adds up those differences, so
// the error is at most about eps·mag. Small changes keep that far below
// the scale of the means (abs, their absolute values summed: not the sum
// itself, which means centred on zero cancel to nearly nothing and would
// make every scrape recompute); a mean that swings by orders of magnitude
// (one value of 1e17 among values near 7) does not, and then the next
// scrape recomputes the sum from the streams (see copyNames, one pass over
// the shard's streams, not their values): exact in every case, O(names)
// unless something swung.
type nameAgg struct {
	streams int
	sum, c  float64
	mag     float64 // Σ|added| since the sum was last recomputed
	abs     float64 // about Σ|stream mean|
}

func (a *nameAgg) add(x float64) {
	t := a.sum + x
	if math.Abs(a.sum) >= math.Abs(x) {
		a.c += (a.sum - t) + x
	} else {
		a.c += (x - t) + a.sum
	}
	a.sum = t
	a.mag += math.Abs(x)
}

func (a *nameAgg) total() float64 { return a.sum + a.c }

// exact reports whether the sum's error is within 1e-13 of the means'
// scale: the mean of means within 1e-13 of the typical |stream mean|.
func (a *nameAgg) exact() bool { return 0x1p-52*a.mag <= 1e-13*a.abs }

// copyNames copies the shard's per-name sums, first recomputing those whose
// rounding could show (one pass over the shard's streams, only then).
func (sh *shard) copyNames(o *op) {
	var redo map[*nameAgg]bool
	for _, a := range sh.names {
		if !a.exact() {
			if redo == nil {
				redo = make(map[*nameAgg]bool)
			}
			redo[a] = true
			*a = nameAgg{streams: a.streams}
		}
	}
	if redo != nil {
		for _, first := range sh.devices {
			for d := first; d != nil; d = d.next {
				for i := range d.streams {
					if st := &d.streams[i]; redo[st.agg] {
						st.agg.add(st.mean)
						st.agg.abs += math.Abs(st.mean)
					}
				}
			}
		}
		for a := range redo {
			a.mag = 0
		}
	}
	o.names = make(map[string]nameAgg, len(sh.names))
	for name, a := range sh.names {
		o.names[name] = *a
	}
}

// device is one device's state, owned by its shard's goroutine.
type device struct {
	// head holds the first bytes of the ID so that lookups compare IDs
	// without a cache miss on the string's bytes.
	head    [headLen]byte
	id      string
	next    *device          // another device whose ID hash collides
	streams []namedStream    // first-seen order
	index   map[string]int32 // name → streams index, once there are many
	history []Anomaly        // ring of the latest anomalies
	hnext   int              // next slot to overwrite once history is full

	hash       uint64               // of id: its key in the shard's maps
	touched    int64                // unix ns of the last request that changed it, for idle eviction
	dirty      bool                 // changed since the last collect
	loading    bool                 // a first load from the store is in flight; ops wait
	retrying   bool                 // a retry of a failed load is in flight; ops go on
	unrestored bool                 // the load failed: serving fresh state, never persisted
	newer      bool                 // unrestored because a newer version saved it: not retried
	transient  bool                 // loaded for a read at the device limit: dropped once answered, unless changed
	waiting    []parked             // ops waiting for the load, in arrival order
	replay     map[string]*keptRing // per metric: samples taken while unrestored, to replay on the stored state
	rseq       uint64               // orders the replay samples of all metrics
	gen        uint64               // Gen of the last snapshot taken of it (see Snapshot.Gen)
	encodedAt  int64                // unix ns of that snapshot, for Options.KeyTTL
	loadSeq    uint32               // counts loads started, so a late answer is known

	// A tombstone: the device was handed over (see HandOff) to member to
	// at goneAt (unix ns), with state handed; it holds nothing else.
	gone   bool
	to     string
	handed []byte
	goneAt int64
	token  uint64 // the taker's load that got it
}

const headLen = 32

func (d *device) is(id []byte) bool {
	n := min(len(id), headLen)
	return len(d.id) == len(id) && string(d.head[:n]) == string(id[:n]) && (n == len(id) || d.id[n:] == string(id[n:]))
}

type namedStream struct {
	// head is the name's first bytes, compared before the name itself.
	head [nameHeadLen]byte
	nlen uint8          // len(name), 255 for 255 and longer
	p    *detect.Params // the detector settings for this metric name
	agg  *nameAgg       // the shard's sums for this name
	mean float64        // the window mean agg holds for this stream
	detect.Stream
	name string // after the hot state: only alerts and reads need it whole
}

// track moves the stream's share of its name's sum to the window's mean
// now; call it after every change to the window.
//
// It runs for every metric value, so it is kept small enough to inline:
// the compensation is Fast2Sum, exact when |sum| >= |x| (a change of one
// stream's mean against the sum of all of them, nearly always); otherwise
// its error is within eps·|x|, which mag counts anyway.
func (ns *namedStream) track() {
	m := ns.Win.Mean()
	a := ns.agg
	x := m - ns.mean
	t := a.sum + x
	a.c += (a.sum - t) + x
	a.sum = t
	a.mag += math.Abs(x)
	a.abs += math.Abs(m) - math.Abs(ns.mean)
	ns.mean = m
}

const nameHeadLen = 15

func (ns *namedStream) setName(name string) {
	ns.name = name
	copy(ns.head[:], name)
	ns.nlen = uint8(min(len(name), 255))
}

func (ns *namedStream) is(name []byte) bool {
	if len(name) <= 8 && cap(name) >= 8 {
		// Short names, the usual kind, in one word: the bytes past the
		// name (within the slice's capacity) are masked off, and head is
		// zero past the name's end.
		return int(ns.nlen) == len(name) &&
			binary.LittleEndian.Uint64(ns.head[:8]) == binary.LittleEndian.Uint64(name[:8])&(^uint64(0)>>(64-8*len(name)))
	}
	n := min(len(name), nameHeadLen)
	if int(ns.nlen) != min(len(name), 255) || string(ns.head[:n]) != string(name[:n]) {
		return false
	}
	return n == len(name) || ns.name == string(name)
}

// indexAt is the stream count past which a map beats a linear scan.
const indexAt = 16

// stream returns d's stream for name, adding it if d has none; want is
// the capacity to give d's streams if they must grow (see add).
func (d *device) stream(name []byte, sh *shard, want int) *namedStream {
	if st := d.find(name); st != nil {
		return st
	}
	return d.add(name, sh, want)
}

// find returns d's stream for name, or nil.
func (d *device) find(name []byte) *namedStream {
	if d.index != nil {
		if i, ok := d.index[string(name)]; ok {
			return &d.streams[i]
		}
		return nil
	}
	for i := range d.streams {
		if d.streams[i].is(name) {
			return &d.streams[i]
		}
	}
	return nil
}

// paramsFor returns the settings of the first rule matching name, or the
// Set's defaults. It runs once per new stream, not per sample.
func (s *Set) paramsFor(name []byte) *detect.Params {
	for i := range s.opts.Rules {
		if ok, _ := path.Match(s.opts.Rules[i].Match, string(name)); ok {
			return &s.opts.Rules[i].Params
		}
	}
	return &s.params
}

// add appends a new stream for name. If d's streams are full they grow to
// want (at least one more): callers pass how many streams d will have
// once the sample being applied is in, so a device whose first sample
// names five metrics grows once, not five times. Growing one at a time
// left arrays of 1 to 4 streams unused in the slabs for a fleet that grew
// together (~480 bytes a stream at 5 metrics).
func (d *device) add(name []byte, sh *shard, want int) *namedStream {
	s := sh.set
	p := s.paramsFor(name)
	agg := sh.names[string(name)]
	if agg == nil {
		agg = new(nameAgg)
		sh.names[string(name)] = agg
	}
	agg.streams++
	ns := namedStream{p: p, agg: agg, Stream: detect.Stream{Win: sh.newRing(p.Window)}}
	ns.setName(string(name))
	if len(d.streams) == cap(d.streams) {
		// Most devices have a few metrics: grow to what is wanted rather
		// than doubling, which would leave up to half the slots (and
		// their ~240 bytes each) unused for the device's lifetime; past
		// indexAt, double. The old array goes back to the slabs.
		n := max(want, len(d.streams)+1)
		if n > indexAt {
			n = max(n, 2*len(d.streams))
		}
		grown := append(sh.streamArrays.get(n), d.streams...)
		sh.streamArrays.put(d.streams)
		d.streams = grown
	}
	d.streams = append(d.streams, ns)
	s.streams.Add(1)
	sh.noteStreams(d)
	if len(d.streams) > indexAt {
		if d.index == nil {
			d.index = make(map[string]int32, len(d.streams))
			for i := range d.streams {
				d.index[d.streams[i].name] = int32(i)
			}
		}
		d.index[string(name)] = int32(len(d.streams) - 1)
	}
	return &d.streams[len(d.streams)-1]
}

// missing counts the metrics j to hi of b that d has no stream for.
func (d *device) missing(b *Batch, j, hi int32) int {
	n := 0
	for ; j < hi; j++ {
		if d.find(b.bytes(b.metrics[j].name)) == nil {
			n++
		}
	}
	return n
}

func (d *device) remember(a Anomaly, limit int) {
	a.sample = 0
	if len(d.history) < limit {
		if len(d.history) == cap(d.history) {
			// Doubling, but never past limit: append took a history of
			// 100 to 128 slots, 2.2 KB a device more than it can use.
			grown := make([]Anomaly, len(d.history), min(max(2*cap(d.history), 4), limit))
			copy(grown, d.history)
			d.history = grown
		}
		d.history = append(d.history, a)
		return
	}
	d.history[d.hnext] = a
	d.hnext = (d.hnext + 1) % limit
}

// recent returns a copy of the history, newest first.
func (d *device) recent() []Anomaly {
	out := make([]Anomaly, 0, len(d.history))
	for i := range d.history {
		j := (d.hnext - 1 - i + 2*len(d.history)) % len(d.history)
		out = append(out, d.history[j])
	}
	return out
}

// latch wakes its one waiter when the last of its ops finishes: what a
// sync.WaitGroup does, but the waiter parks on a channel, which made a
// one-sample round trip ~50 ns (9%) cheaper at GOMAXPROCS=1
// (BenchmarkIngest1, pinned, best of 8).
type latch struct {
	n  atomic.Int32
	ch chan struct{} // capacity 1; made by the first add
}

// add counts n more ops; all adds come before the first op is sent.
func (l *latch) add(n int32) {
	if l.ch == nil {
		l.ch = make(chan struct{}, 1)
	}
	l.n.Add(n)
}

// finish counts one op done; the last one wakes the waiter.
func (l *latch) finish() {
	if l.n.Add(-1) == 0 {
		l.ch <- struct{}{}
	}
}

func (l *latch) wait() { <-l.ch }
