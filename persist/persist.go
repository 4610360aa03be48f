// Package persist keeps device state durable in Redis: one loop copies the
// shards' changed devices every interval and writes them with pipelined
// commands (rueidis), and a few workers load devices back on first use.
// Nothing here runs on a shard goroutine or in a request handler.
package persist

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/rueidis"
	"github.com/rs/zerolog"
)

// Options configure a Writer. A zero field means the default in its comment.
type Options struct {
	Addrs    []string      // Redis seeds (a Redis Cluster is detected); required
	Password string        // zero: none
	DB       int           // zero: 0
	Interval time.Duration // between snapshots; zero: 1s
	// MaxBusy is the largest share of the time snapshot rounds may take:
	// after rounds that cost d (the shards' time plus the flush, the lesser
	// of the last two), the next starts d/MaxBusy after the last one's
	// start when that is later than Interval, up to MaxInterval. A large
	// busy fleet then costs persistence lag (reported as
	// snapshot_period_seconds), not ingest capacity. Zero: 0.25; 1: rounds
	// run back to back when they take longer than Interval.
	MaxBusy float64
	// MaxInterval bounds the stretched interval; zero: 10 x Interval. The
	// caller keeps it under TTL less the idle eviction time, or a clean
	// device's key could expire before the device leaves memory.
	MaxInterval time.Duration
	TTL         time.Duration // of each device key; zero: 7 days
	Timeout     time.Duration // per Redis call; zero: 2s
	Prefix      string        // of keys, before the device ID; zero: "aiload:dev:"
	Loaders     int           // loader goroutines, each pipelining up to 128 GETs; zero: 8
	// Fence writes each snapshot through a script that refuses to replace
	// one with a greater Gen (shard.Snapshot.Gen): in a cluster, a member
	// whose snapshot of a device was taken before it handed the device
	// over must not write it over the new owner's. Refusals are counted
	// (snapshot_writes_fenced_total) and not retried.
	Fence bool
	Log   zerolog.Logger
}

// Writer writes snapshots and loads them back. It implements shard.Store.
type Writer struct {
	opts      Options
	client    atomic.Pointer[rueidis.Client] // nil until the first connection
	connected chan struct{}                  // closed at the first connection
	set       *shard.Set
	loads     chan load

	mu sync.Mutex
	// pending holds the latest encoded snapshot of every device not yet
	// written (newer ones replace older), so a Redis outage costs memory
	// per device, not per snapshot, and loads see unwritten state.
	pending map[string][]byte // guarded by mu
	closed  bool              // guarded by mu: Stop is done with loads; they are refused

	// ctx ends the connector and the loaders, last in Stop; loopCtx ends
	// the snapshot loop, first in Stop, so that the final reconciliation
	// still has loaders.
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	loopCtx    context.Context
	loopCancel context.CancelFunc
	loopDone   chan struct{}
	stopping   atomic.Bool            // Stop began: loads wait for a connection instead of failing fast
	keyErr     error                  // the last flush's error reply about a key, if only such; used by loop, then Stop
	wake       chan struct{}          // cuts the connector's backoff short
	logAt      [logKinds]atomic.Int64 // unix ns of the last rate-limited log line of each kind
	born       time.Time
	// downUntil (unix ns) makes loads fail at once after a Redis error, so
	// an outage costs new devices one fast failure each, not a Timeout
	// each in a queue behind a few loaders.
	downUntil atomic.Int64
	period    atomic.Int64 // ns from the last round's start to the next's

	ms                                  *metrics.Set
	duration                            *metrics.PrometheusHistogram
	written, failures, redisErrors      *metrics.Counter
	hits, misses, corrupt, loadFailures *metrics.Counter
	bytesWritten, fenced                *metrics.Counter
}

type load struct {
	id   string
	done func(*shard.Snapshot, error)
}

var _ shard.Store = (*Writer)(nil)

// ErrNotConnected is returned while Redis has never answered.
var ErrNotConnected = errors.New("redis not connected yet")

// New returns a Writer that starts connecting to Redis in the background;
// pass it as shard.Options.Store and call Start with the Set.
func New(opts Options) *Writer {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.TTL <= 0 {
		opts.TTL = 7 * 24 * time.Hour
	}
	if opts.MaxBusy <= 0 || opts.MaxBusy > 1 {
		opts.MaxBusy = 0.25
	}
	if opts.MaxInterval <= 0 {
		opts.MaxInterval = 10 * opts.Interval
	}
	opts.MaxInterval = max(opts.MaxInterval, opts.Interval)
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Prefix == "" {
		opts.Prefix = "aiload:dev:"
	}
	if opts.Loaders <= 0 {
		opts.Loaders = 8
	}
	w := &Writer{opts: opts, loads: make(chan load, loadQueue), pending: map[string][]byte{}, ms: metrics.NewSet(),
		connected: make(chan struct{}), wake: make(chan struct{}, 1), loopDone: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.loopCtx, w.loopCancel = context.WithCancel(context.Background())
	w.born = time.Now()
	w.duration = w.ms.NewPrometheusHistogram("snapshot_duration_seconds")
	w.written = w.ms.NewCounter("snapshots_written_total")
	w.bytesWritten = w.ms.NewCounter("snapshot_bytes_written_total")
	w.fenced = w.ms.NewCounter("snapshot_writes_fenced_total")
	w.failures = w.ms.NewCounter("snapshot_failures_total")
	w.redisErrors = w.ms.NewCounter("redis_errors_total")
	w.hits = w.ms.NewCounter("restore_hits_total")
	w.misses = w.ms.NewCounter("restore_misses_total")
	w.corrupt = w.ms.NewCounter("restore_corrupt_total")
	w.loadFailures = w.ms.NewCounter("restore_failures_total")
	w.ms.NewGauge("snapshot_pending_devices", func() float64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return float64(len(w.pending))
	})
	w.period.Store(int64(opts.Interval))
	w.ms.NewGauge("snapshot_interval_seconds", func() float64 { return opts.Interval.Seconds() })
	w.ms.NewGauge("snapshot_period_seconds", func() float64 { return time.Duration(w.period.Load()).Seconds() })
	w.ms.NewGauge("redis_connected", func() float64 {
		if w.client.Load() != nil {
			return 1
		}
		return 0
	})
	w.wg.Add(1 + opts.Loaders)
	go w.connect()
	for range opts.Loaders {
		go w.loader()
	}
	return w
}

// Metrics returns the Writer's metrics for /metrics.
func (w *Writer) Metrics() *metrics.Set { return w.ms }

// KeyTTL returns the expiry of the keys it writes: the shards write a
// device again before evicting it when its key may expire soon
// (shard.Options.KeyTTL).
func (w *Writer) KeyTTL() time.Duration { return w.opts.TTL }

// Key returns the Redis key of a device.
func (w *Writer) Key(id string) string { return w.opts.Prefix + id }

// Start begins snapshotting set every Interval, and retrying the loads of
// its unrestored devices every second. Call Stop to end it.
func (w *Writer) Start(set *shard.Set) {
	w.set = set
	go w.loop()
}

// connect dials Redis until it answers: the service starts without it.
func (w *Writer) connect() {
	defer w.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress:      w.opts.Addrs,
			Password:         w.opts.Password,
			SelectDB:         w.opts.DB,
			DisableCache:     true,
			ConnWriteTimeout: w.opts.Timeout,
			Dialer:           net.Dialer{Timeout: w.opts.Timeout, KeepAlive: 30 * time.Second},
		})
		if err == nil {
			w.client.Store(&c)
			close(w.connected)
			w.opts.Log.Info().Strs("redis", w.opts.Addrs).Msg("redis connected")
			return
		}
		w.redisErrors.Inc()
		w.logf(logConnect, err, "cannot connect to redis; retrying (ingest goes on, snapshots wait)")
		if w.stopping.Load() {
			// The stop waits for this connection to reconcile and write:
			// dial again soon, not after a backoff longer than its budget.
			backoff = 100 * time.Millisecond
		}
		select {
		case <-w.ctx.Done():
			return
		case <-w.wake:
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (w *Writer) clientOrNil() rueidis.Client {
	if p := w.client.Load(); p != nil {
		return *p
	}
	return nil
}

// Load implements shard.Store: the latest unwritten snapshot if there is
// one, else a GET by a loader worker. done is never called on the caller's
// goroutine.
func (w *Writer) Load(id string, done func(*shard.Snapshot, error)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		go done(nil, errStopped)
		return
	}
	if b, ok := w.pending[id]; ok {
		b = bytes.Clone(b) // a chunk being written is the shards' memory, reused after
		go func() { done(w.decode(id, b)) }()
		return
	}
	select {
	case w.loads <- load{id, done}:
	default:
		w.loadFailures.Inc()
		w.logf(logLoad, errLoadQueueFull, "load queue full; serving the device unrestored until a retry loads it")
		go done(nil, errLoadQueueFull)
	}
}

var (
	errStopped   = errors.New("persister stopped")
	errRedisDown = errors.New("redis failed just now; not asking again for a second")
	// errLoadQueueFull: more devices wait for their first load than
	// loadQueue holds.
	errLoadQueueFull = errors.New("too many loads in flight")
)

// markDown makes loads fail fast for the next second.
func (w *Writer) markDown() { w.downUntil.Store(time.Now().Add(time.Second).UnixNano()) }

func (w *Writer) loader() {
	defer w.wg.Done()
	batch := make([]load, 0, loadBatch)
	for {
		select {
		case <-w.ctx.Done():
			// Answer what is queued so no shard waits forever.
			for {
				select {
				case l := <-w.loads:
					l.done(nil, errStopped)
				default:
					return
				}
			}
		case l := <-w.loads:
			// Take whatever else is queued too, and ask for it in one
			// pipeline: a restart under a large fleet queues thousands of
			// loads at once.
			batch = append(batch[:0], l)
		more:
			for len(batch) < loadBatch {
				select {
				case l := <-w.loads:
					batch = append(batch, l)
				default:
					break more
				}
			}
			w.get(batch)
			clear(batch)
		}
	}
}

// flushChunk is the most commands flush sends in one pipeline.
const flushChunk = 512

// loadQueue bounds the devices waiting for a first load (24 bytes each):
// enough for a restart in front of a large fleet, whose first requests name
// tens of thousands of devices within milliseconds.
const loadQueue = 1 << 16

// loadBatch bounds the GETs one loader pipelines at a time.
const loadBatch = 128

// get loads the batch's devices and answers each load.
func (w *Writer) get(batch []load) {
	fail := func(err error) {
		w.loadFailures.Add(len(batch))
		for _, l := range batch {
			l.done(nil, err)
		}
	}
	// While stopping, every load is a last chance to reconcile a device
	// before exit: no fast failure, and wait for a connection.
	stopping := w.stopping.Load()
	if !stopping && time.Now().UnixNano() < w.downUntil.Load() {
		fail(errRedisDown)
		return
	}
	ctx, cancel := context.WithTimeout(w.ctx, w.opts.Timeout)
	defer cancel()
	c := w.clientOrNil()
	if c == nil {
		// Just after start the first connection may be milliseconds away:
		// wait for it then, and fail at once later.
		grace := time.Until(w.born.Add(w.opts.Timeout))
		if stopping {
			grace = w.opts.Timeout
		}
		select {
		case <-w.connected:
		case <-time.After(max(grace, 0)):
		case <-ctx.Done():
		}
		if c = w.clientOrNil(); c == nil {
			fail(ErrNotConnected)
			return
		}
	}
	cmds := make(rueidis.Commands, len(batch))
	for i, l := range batch {
		cmds[i] = c.B().Get().Key(w.Key(l.id)).Build()
	}
	var firstErr error
	down := false
	for i, r := range c.DoMulti(ctx, cmds...) {
		l := batch[i]
		b, err := r.AsBytes()
		switch {
		case rueidis.IsRedisNil(err):
			w.misses.Inc()
			l.done(nil, nil)
		case isWrongType(err):
			// The key holds something else than a snapshot: as corrupt as
			// a bad value, and as permanent. Retrying it every second kept
			// the device unrestored for good, and a whole stop's budget.
			l.done(w.corruptValue(l.id, err))
		case err != nil:
			w.loadFailures.Inc()
			if firstErr == nil {
				firstErr = err
			}
			// Marking Redis down for an error reply about one key failed
			// every other load for a second.
			down = down || notAnswering(err)
			l.done(nil, fmt.Errorf("cannot load %q: %w", l.id, err))
		default:
			l.done(w.decode(l.id, b))
		}
	}
	if firstErr != nil {
		w.redisErrors.Inc()
		if down {
			w.markDown()
		}
		w.logf(logLoad, firstErr, "cannot load devices from redis; serving them unrestored until redis answers")
	}
}

// decode treats a corrupt value as no value: the device starts fresh and
// its next snapshot replaces the garbage.
func (w *Writer) decode(id string, b []byte) (*shard.Snapshot, error) {
	s, err := shard.DecodeSnapshot(b)
	if errors.Is(err, shard.ErrNewerVersion) && s.Device == id {
		// Served unrestored, never written over, retried every second: a
		// rollback keeps what the newer version saved.
		w.loadFailures.Inc()
		w.logf(logNewer, err, "device "+id+" was saved by a newer version; serving it unrestored, not writing over it")
		return nil, fmt.Errorf("cannot load %q: %w", id, err)
	}
	if err == nil && s.Device != id || errors.Is(err, shard.ErrNewerVersion) {
		err = fmt.Errorf("%w: holds device %q", shard.ErrCorrupt, s.Device)
	}
	if err != nil {
		snap, err := w.corruptValue(id, err)
		if g, ok := shard.HeaderGen(b); ok && w.opts.Fence {
			// Start fresh, but after the corrupt value's Gen, so the
			// fenced write of the next snapshot replaces it.
			snap = &shard.Snapshot{Device: id, Gen: g}
		}
		return snap, err
	}
	w.hits.Inc()
	return s, nil
}

// corruptValue counts and logs a key that holds no valid snapshot and
// answers as if it held nothing.
func (w *Writer) corruptValue(id string, err error) (*shard.Snapshot, error) {
	w.corrupt.Inc()
	w.logf(logCorrupt, err, "corrupt snapshot in redis for device "+id+"; starting it fresh")
	return nil, nil
}

// notAnswering reports an error of Redis itself (no answer, a broken
// connection), which other commands would meet too, as against an error
// reply, which is about its own key.
func notAnswering(err error) bool {
	_, reply := rueidis.IsRedisErr(err)
	return !reply
}

// isWrongType reports a WRONGTYPE reply: the key holds another type.
func isWrongType(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// retryEvery is how often unrestored devices are retried, whatever the
// snapshot interval: with SNAPSHOT_INTERVAL=1h they waited an hour.
const retryEvery = time.Second

// flushRetryFirst and flushRetryMax bound the backoff of a failed flush
// (and the interval bounds it too), which runs on its own timer: retried
// only at the next round, a failure waited up to two intervals (two hours
// at SNAPSHOT_INTERVAL=1h).
const (
	flushRetryFirst = time.Second
	flushRetryMax   = 30 * time.Second
)

// pace returns the time from the start of a round that took took to the
// start of the next: Interval, or longer when rounds take more than
// MaxBusy of it, up to MaxInterval.
func (w *Writer) pace(took time.Duration) time.Duration {
	stretched := time.Duration(float64(took) / w.opts.MaxBusy)
	return min(max(w.opts.Interval, stretched), w.opts.MaxInterval)
}

// loop snapshots every Interval (or less often, see pace), retries a
// failed flush with backoff, and retries unrestored devices every
// retryEvery, until Stop.
func (w *Writer) loop() {
	defer close(w.loopDone)
	rounds := time.NewTimer(w.opts.Interval)
	defer rounds.Stop()
	retries := time.NewTicker(retryEvery)
	defer retries.Stop()
	// The backoff never exceeds the interval: once Redis is back, what a
	// SIGKILL loses is again at most one interval of changes (with 30 s
	// at SNAPSHOT_INTERVAL=200ms, changes waited 3 s after a 4 s outage).
	first, most := min(flushRetryFirst, w.opts.Interval), min(flushRetryMax, w.opts.Interval)
	var retry *time.Timer // armed while a failed flush waits
	backoff := first
	var lastCost time.Duration // of the round before: see pace below
	var logged time.Duration   // the stretched period last logged
	// failed arms the retry after a failed write, or resets its backoff.
	failed := func(err error) {
		if err == nil {
			backoff = first
			return
		}
		retry = time.NewTimer(backoff)
		backoff = min(2*backoff, most)
	}
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C
		}
		select {
		case <-w.loopCtx.Done():
			if retry != nil {
				retry.Stop()
			}
			return
		case <-retries.C:
			if w.set.Unrestored() > 0 {
				_, _ = w.set.Retry(false)
			}
		case <-rounds.C:
			start := time.Now()
			// Written as collected unless a failed flush waits for its
			// retry, which then writes this round's too.
			write := retry == nil
			busy, writing, err := w.round(w.loopCtx, true, write)
			if write {
				failed(err)
			}
			// The shards' time, summed, spread over the cores they share.
			cost := busy/time.Duration(runtime.GOMAXPROCS(0)) + writing
			took := time.Since(start)
			// A round's cost is the shards' time on it plus the flush's
			// (not the collect's wait in queues behind requests), and
			// the lesser of two rounds', so that one slow flush (a Redis
			// stall) does not put off the rounds after it; a busy fleet
			// makes every round slow.
			period := w.pace(min(cost, lastCost))
			lastCost = cost
			// A round longer than the period runs back to back with the
			// next: the period is then the round itself.
			period = max(period, took)
			// Logged when rounds start to stretch, and again each time the
			// period doubles beyond what was last logged.
			if period > w.opts.Interval && (time.Duration(w.period.Load()) <= w.opts.Interval || period > 2*logged) {
				logged = period
				w.logf(logSlow, nil, fmt.Sprintf("a snapshot round took %s: rounds now start every %s, not every %s, so that they take at most %.0f%% of the time (SNAPSHOT_MAX_BUSY); a SIGKILL loses up to that much",
					took.Round(time.Millisecond), period.Round(time.Millisecond), w.opts.Interval, 100*w.opts.MaxBusy))
			}
			w.period.Store(int64(period))
			rounds.Reset(period - took)
		case <-retryC:
			retry = nil
			failed(w.flush(w.loopCtx))
		}
	}
}

// round takes the shards' changed devices and, with write, writes them
// chunk by chunk as the shards hand them over, so a round holds one
// chunk's snapshots at a time, not the whole fleet's (with 100k busy
// devices, a few hundred MB). What is not written (write false, Redis
// failing, a refused key) waits in pending. It returns the shards' time on
// the round, the time spent writing, and the error that failed a write.
func (w *Writer) round(ctx context.Context, evict, write bool) (busy, writing time.Duration, err error) {
	var res wrote
	if write {
		// First what earlier rounds left (refused keys): older than
		// anything this round takes.
		if ids, vals := w.pendingList(); len(ids) > 0 {
			began := time.Now()
			res = w.write(ctx, ids, vals)
			writing = time.Since(began)
		}
	}
	// On ErrStopped, each has still had what was taken.
	busy, _ = w.set.CollectEach(evict, func(snaps []shard.Encoded) bool {
		if !write || res.downErr != nil {
			w.keep(snaps)
			if write { // Redis stopped answering this round: not written either
				res.total += len(snaps)
				res.failed += len(snaps)
			}
			return true
		}
		began := time.Now()
		r := w.writeChunk(ctx, snaps)
		writing += time.Since(began)
		res.add(r)
		// Without an answer, a command may still be sent later, reading
		// its value (rueidis sends what it was given even after the
		// caller's deadline): the shards must not reuse that memory.
		return r.downErr == nil
	})
	if res.total > 0 && !errors.Is(res.downErr, ErrNotConnected) {
		w.duration.Update(writing.Seconds()) // the round's writes, all chunks
	}
	return busy, writing, w.account(ctx, res)
}

// keep copies snaps into pending.
func (w *Writer) keep(snaps []shard.Encoded) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range snaps {
		w.pending[s.Device] = bytes.Clone(s.Data)
	}
}

// writeChunk writes snaps, whose Data is the shards' memory: they are in
// pending while they are written (for loads), and what is left there
// after is copied.
func (w *Writer) writeChunk(ctx context.Context, snaps []shard.Encoded) wrote {
	ids := make([]string, len(snaps))
	vals := make([][]byte, len(snaps))
	w.mu.Lock()
	for i, s := range snaps {
		ids[i], vals[i] = s.Device, s.Data
		w.pending[s.Device] = s.Data
	}
	w.mu.Unlock()
	r := w.write(ctx, ids, vals)
	w.mu.Lock()
	for i, id := range ids {
		if b, ok := w.pending[id]; ok && sameBytes(b, vals[i]) {
			w.pending[id] = bytes.Clone(b)
		}
	}
	w.mu.Unlock()
	return r
}

// pendingList returns what is pending.
func (w *Writer) pendingList() (ids []string, vals [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids = make([]string, 0, len(w.pending))
	vals = make([][]byte, 0, len(w.pending))
	for id, b := range w.pending {
		ids, vals = append(ids, id), append(vals, b)
	}
	return ids, vals
}

// flush writes everything pending; what fails stays.
func (w *Writer) flush(ctx context.Context) error {
	ids, vals := w.pendingList()
	if len(ids) == 0 {
		return nil
	}
	start := time.Now()
	r := w.write(ctx, ids, vals)
	if !errors.Is(r.downErr, ErrNotConnected) {
		w.duration.UpdateDuration(start)
	}
	return w.account(ctx, r)
}

// wrote is what writes did.
type wrote struct {
	total, failed     int
	firstErr, downErr error // downErr: Redis did not answer
}

func (r *wrote) add(o wrote) {
	r.total += o.total
	r.failed += o.failed
	r.firstErr = cmp.Or(r.firstErr, o.firstErr)
	r.downErr = cmp.Or(r.downErr, o.downErr)
}

// account counts and logs what writes did, once for a round or a flush,
// and returns the error that fails it: only Redis not answering.
func (w *Writer) account(ctx context.Context, r wrote) error {
	if errors.Is(ctx.Err(), context.Canceled) && r.downErr != nil {
		// Stop cut the loop's writes short: not Redis's fault, nothing to
		// count, and loads must not fail fast for the stop's reconcile.
		// What was not written is pending, for the stop's last round.
		return r.downErr
	}
	if r.failed > 0 {
		w.failures.Add(r.failed)
		if !errors.Is(r.downErr, ErrNotConnected) { // the connector counts and logs that
			w.redisErrors.Inc()
			w.logf(logWrite, r.firstErr, fmt.Sprintf("%d of %d snapshots not written; kept for retry", r.failed, r.total))
		}
	}
	w.keyErr = nil
	if r.failed > 0 && r.downErr == nil {
		w.keyErr = r.firstErr // only replies about keys: kept for the stop's report
	}
	if r.downErr != nil {
		// Only Redis not answering fails the flush (and loads, for a
		// second); a key Redis refuses stays pending without holding up
		// the others (one such key made the whole of Redis look down).
		w.markDown()
		return r.downErr
	}
	return nil
}

// sameBytes reports whether a and b are the same memory.
func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// write writes vals to ids' keys, flushChunk commands per pipeline, each
// with its own deadline; what is written leaves pending unless a newer
// snapshot replaced it meanwhile. After Redis fails to answer, the rest
// is not tried (counted failed).
func (w *Writer) write(ctx context.Context, ids []string, vals [][]byte) wrote {
	r := wrote{total: len(ids)}
	c := w.clientOrNil()
	if c == nil {
		r.failed, r.downErr = len(ids), ErrNotConnected
		return r
	}
	cmds := make(rueidis.Commands, 0, min(len(ids), flushChunk))
	// Bounded pipelines, because requests run while each one waits for
	// Redis: with the whole interval in one, batch p99 in Redis mode was
	// 9.5-13 ms; with these, 4.2-8.3 ms (in memory 3.4-5.4 ms).
	for lo := 0; lo < len(ids); lo += flushChunk {
		hi := min(lo+flushChunk, len(ids))
		cctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
		var res []rueidis.RedisResult
		if w.opts.Fence {
			execs := make([]rueidis.LuaExec, 0, hi-lo)
			ttl := strconv.FormatInt(w.opts.TTL.Milliseconds(), 10)
			for i := lo; i < hi; i++ {
				execs = append(execs, rueidis.LuaExec{Keys: []string{w.Key(ids[i])}, Args: []string{rueidis.BinaryString(vals[i]), ttl}})
			}
			res = fencedSet.ExecMulti(cctx, c, execs...)
		} else {
			cmds = cmds[:0]
			for i := lo; i < hi; i++ {
				cmds = append(cmds, c.B().Set().Key(w.Key(ids[i])).Value(rueidis.BinaryString(vals[i])).Px(w.opts.TTL).Build())
			}
			res = c.DoMulti(cctx, cmds...)
		}
		cancel()
		w.mu.Lock()
		fenced := 0
		for k, rr := range res {
			i := lo + k
			if err := rr.Error(); err != nil {
				// A refused key (an ACL refusal, say) stays pending and
				// the others go on.
				r.failed++
				r.firstErr = cmp.Or(r.firstErr, err)
				if notAnswering(err) {
					r.downErr = cmp.Or(r.downErr, err)
				}
				continue
			}
			if n, _ := rr.AsInt64(); w.opts.Fence && n == 0 {
				fenced++ // Redis holds a newer snapshot: this one is dropped
			} else {
				w.written.Inc()
				w.bytesWritten.Add(len(vals[i]))
			}
			// Remove it unless a newer snapshot arrived meanwhile.
			if b, ok := w.pending[ids[i]]; ok && sameBytes(b, vals[i]) {
				delete(w.pending, ids[i])
			}
		}
		w.mu.Unlock()
		if fenced > 0 {
			w.fenced.Add(fenced)
			w.logf(logFenced, nil, fmt.Sprintf("%d snapshots not written: Redis holds newer ones (devices another member took over)", fenced))
		}
		if r.downErr != nil {
			r.failed += len(ids) - hi // Redis is in trouble: the rest waits for the retry
			break
		}
	}
	return r
}

// StopReport says what the final snapshot of Stop could and could not do.
type StopReport struct {
	Reconciled   int // unrestored devices reconciled with Redis during Stop
	Written      int // snapshots written by the final flush
	Pending      int // devices whose latest changes were not written: lost
	Unreconciled int // devices whose load never succeeded: their samples since are lost
	Newer        int // of those, devices a newer version saved: left alone, never written over
}

// Stop ends the snapshot loop, reconciles the devices whose load failed
// (loading what Redis holds and replaying their samples onto it, or
// keeping their fresh state when Redis holds nothing), takes a last
// snapshot of every changed device and writes it, retrying until ctx ends;
// then it closes Redis. Call it after shard.Set.Seal (every acknowledged
// request is applied) and before shard.Set.Stop. It returns an error
// when anything was left unwritten; the report counts what.
func (w *Writer) Stop(ctx context.Context) (StopReport, error) {
	var rep StopReport
	w.stopping.Store(true)
	w.loopCancel()
	if w.set != nil {
		<-w.loopDone
	}
	select { // dial now, not after the connector's backoff
	case w.wake <- struct{}{}:
	default:
	}
	var err error
	if w.set != nil {
		before := w.written.Get()
		first := w.set.Unrestored()
		for {
			// Reconciling gets at most half of what is left: the flush of
			// every other changed device must not wait on a device Redis
			// will not give back. Retries still in flight at its end are
			// abandoned, so none lands after the collect below, restoring
			// and changing a device no snapshot then holds.
			rctx, cancel := context.WithCancel(ctx)
			if dl, ok := ctx.Deadline(); ok {
				rctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
			}
			w.reconcile(rctx)
			cancel()
			_ = w.set.AbandonRetries()
			_, _, err = w.round(ctx, false, true)
			for err != nil && ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				err = w.flush(ctx)
			}
			// Everything written and time left, but devices still
			// unrestored: Redis may be back now; go round again.
			if err != nil || ctx.Err() != nil || w.set.Unrestored() == w.set.Newer() || w.Pending() > 0 {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		rep.Written = int(w.written.Get() - before)
		rep.Unreconciled = w.set.Unrestored()
		rep.Newer = w.set.Newer()
		rep.Reconciled = first - rep.Unreconciled
	}
	w.mu.Lock()
	w.closed = true // from now on Load answers at once; loaders drain the rest
	rep.Pending = len(w.pending)
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
	if c := w.clientOrNil(); c != nil {
		c.Close()
	}
	if rep.Pending > 0 || rep.Unreconciled > 0 {
		// Name the cause: Redis refusing keys, newer versions' snapshots,
		// or the budget.
		why := cmp.Or(err, w.keyErr)
		if why == nil && rep.Newer == rep.Unreconciled && rep.Pending == 0 {
			why = fmt.Errorf("%w: left alone", shard.ErrNewerVersion)
		}
		why = cmp.Or(why, ctx.Err(), errors.New("stopped before they could be"))
		return rep, fmt.Errorf("final snapshot incomplete: %d devices not written, %d not reconciled with redis (%d saved by a newer version): %w",
			rep.Pending, rep.Unreconciled, rep.Newer, why)
	}
	return rep, nil
}

// reconcile retries the loads of every unrestored device until none is
// left or ctx ends, and returns how many it reconciled.
func (w *Writer) reconcile(ctx context.Context) int {
	first := w.set.Unrestored()
	for w.set.Unrestored() > 0 && ctx.Err() == nil {
		left := w.set.Unrestored()
		started, err := w.set.Retry(true)
		if err != nil || started == 0 && w.set.Retrying() == 0 {
			break // nothing left that a retry can load (saved by a newer version)
		}
		for w.set.Retrying() > 0 && ctx.Err() == nil {
			time.Sleep(2 * time.Millisecond)
		}
		if w.set.Unrestored() >= left { // redis still down: try again shortly
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return first - w.set.Unrestored()
}

// Pending returns how many devices have snapshots not yet written.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// logf logs at most one line a second, so an outage does not flood logs.
//
// Each kind of trouble has its own second, so one that recurs (a key Redis
// refuses, every round) does not silence the others (a corrupt snapshot).
func (w *Writer) logf(kind logKind, err error, msg string) {
	now := time.Now().UnixNano()
	at := &w.logAt[kind]
	last := at.Load()
	if now-last < int64(time.Second) || !at.CompareAndSwap(last, now) {
		return
	}
	w.opts.Log.Warn().Err(err).Msg(msg)
}

type logKind uint8

const (
	logConnect logKind = iota
	logLoad
	logNewer
	logCorrupt
	logWrite
	logFenced
	logSlow
	logKinds
)

// fencedSet writes KEYS[1] = ARGV[1] with TTL ARGV[2] ms, unless the value
// stored has a greater or equal Gen (and differs), or is a newer version's
// snapshot: then it returns 0, else 1. The Gen of a version 2 to 4 snapshot is
// the 8 bytes big-endian after the version byte, "aisv" and the device ID
// (a uvarint length, one or two bytes for IDs of at most 128, then the
// bytes); anything else (version 1, garbage, another type) has none and is
// written over.
var fencedSet = rueidis.NewLuaScript(`
local function gen(s)
  local v = string.byte(s, 1)
  if not v or v < 2 or v > 4 or string.sub(s, 2, 5) ~= 'aisv' then return nil end
  local n, p = string.byte(s, 6), 7
  if n == nil then return nil end
  if n >= 128 then
    local hi = string.byte(s, 7)
    if hi == nil then return nil end
    n, p = n - 128 + 128 * hi, 8
  end
  p = p + n
  local g = 0
  for i = p, p + 7 do
    local c = string.byte(s, i)
    if c == nil then return nil end
    g = g * 256 + c
  end
  if g > 4503599627370495 then return nil end -- shard.MaxGen: beyond, garbage
  return g
end
local ok, cur = pcall(redis.call, 'GET', KEYS[1])
if ok and cur and cur ~= ARGV[1] then
  local v = string.byte(cur, 1)
  if v and v > 4 and v < 128 and string.sub(cur, 2, 5) == 'aisv' then return 0 end
  local old, new = gen(cur), gen(ARGV[1])
  if old and new and old >= new then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)
