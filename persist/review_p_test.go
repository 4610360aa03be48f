package persist

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/rs/zerolog"
)

// TestReviewP_RedisStallStretchesRoundsPastRecovery: pacing (loop, pace)
// takes a round's wall time as its cost, and a round's flush waits up to
// Options.Timeout for a Redis that does not answer. One stalled flush (a
// Redis pause, a failover, a network hiccup: default Timeout 2 s) is then
// read as a round that "took" 2 s, and the next round is put off by
// 2 s / MAX_BUSY = 8 s (up to ten intervals at the defaults), although the
// round cost neither ingest CPU nor Redis anything. Once Redis answers
// again, changes acknowledged after the recovery wait for that stretched
// round: a SIGKILL then loses up to ten intervals of changes, against the
// loop's own promise ("once Redis is back, what a SIGKILL loses is again
// at most one interval of changes") and docs/persistence.md's (pacing is
// for fleets "so large and busy that rounds take more than
// SNAPSHOT_MAX_BUSY of the interval", not for a Redis stall).
//
// Here: Interval 400 ms, Timeout 1 s, Redis paused 1.5 s while one device
// waits to be written. The round's flush waits for the stall (until it
// ends or the Timeout fails it, then a retry writes the device), about
// 1 s, so the period becomes 4 s. A device changed once Redis answers
// again should be written by the next round, within about one interval;
// it waits ~2.5 s (the stretched period less what had passed).
func TestReviewP_RedisStallStretchesRoundsPastRecovery(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	const interval = 400 * time.Millisecond
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: interval, Timeout: time.Second},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	// Both devices held and written first: a change to a held device
	// needs no load, so the ingests below never wait for Redis.
	s.ingest(t, "a", 1)
	s.ingest(t, "b", 1)
	waitFor(t, "a and b written", func() bool { return s.w.Pending() == 0 && s.w.written.Get() >= 2 })
	// Pause first, then change a device: the next round's flush (within
	// 400 ms) meets the stall.
	if err := c.Do(context.Background(), c.B().Arbitrary("CLIENT", "PAUSE").Args("1500", "ALL").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.ingest(t, "a", 2)
	waitFor(t, "a's change written once redis answers again", func() bool {
		st := stored(t, c, "a")
		return st != nil && st.Streams[0].Count == 2
	})
	period := time.Duration(s.w.period.Load())
	back := time.Now()
	s.ingest(t, "b", 2) // acknowledged with Redis healthy
	var lag time.Duration
	for time.Since(back) < 10*time.Second {
		if st := stored(t, c, "b"); st != nil && st.Streams[0].Count == 2 {
			lag = time.Since(back)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("snapshot_period_seconds after the stalled round: %v (interval %v); snapshot_failures_total %d; b written %v after it was acknowledged",
		period, interval, s.w.failures.Get(), lag.Round(time.Millisecond))
	if lag == 0 || lag > 3*interval {
		t.Fatalf("with redis answering again, a change waited %v (%.1f intervals) to be written: the time the round's "+
			"flush waited for the stalled redis counted as the round's cost and stretched the period to %v, so a SIGKILL meanwhile loses "+
			"that much, not at most one SNAPSHOT_INTERVAL (%v)", lag.Round(time.Millisecond), float64(lag)/float64(interval), period, interval)
	}
}

// TestReviewP_IngestQueueCountsAsRoundCost: a round's duration, which
// pace divides by MAX_BUSY, is wall time from the loop, and Set.Collect's
// ops wait in the shards' queues behind the ingest requests queued before
// them. Under ingest load, a round that encodes and writes a single device
// (microseconds of work) is read as costly, and the period is stretched up
// to ten intervals: persistence lag (what a SIGKILL loses) grows with
// ingest queueing, while no ingest CPU is saved, since the round's own
// work was negligible. Pacing is documented to stretch rounds only when
// the rounds themselves are costly ("a fleet so large and busy that
// rounds take more than SNAPSHOT_MAX_BUSY of the interval"; "so a large
// busy fleet costs persistence lag, not ingest CPU"); here the fleet is
// one device.
//
// Here one shard applies back-to-back batches of ~250 ms for one device
// (no other device changes), and the period gauge should stay at the
// interval (each round collects and writes one device); it is stretched
// to several intervals.
func TestReviewP_IngestQueueCountsAsRoundCost(t *testing.T) {
	r := MustStartRedis(t)
	const interval = 100 * time.Millisecond
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: interval, Timeout: 5 * time.Second},
		shard.Options{Shards: 1})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "busy", 1)
	waitFor(t, "busy written", func() bool { return s.w.Pending() == 0 && s.w.written.Get() > 0 })

	// A batch for the one device that keeps the shard busy ~250 ms.
	build := func(n int) *shard.Batch {
		b := new(shard.Batch)
		for i := range n {
			b.Add([]byte("busy"), int64(1_000_000+i))
			b.AddMetric([]byte("m"), float64(i%7))
		}
		return b
	}
	n := 100_000
	var b *shard.Batch
	for {
		b = build(n)
		start := time.Now()
		if err := s.set.Ingest(b); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if took >= 250*time.Millisecond || n >= 3_200_000 {
			t.Logf("a batch of %d samples for one device takes %v", n, took)
			break
		}
		n *= 2
	}

	var (
		stop atomic.Bool
		wg   sync.WaitGroup
		most atomic.Int64
	)
	wg.Go(func() {
		for !stop.Load() {
			if p := s.w.period.Load(); p > most.Load() {
				most.Store(p)
			}
			time.Sleep(time.Millisecond)
		}
	})
	deadline := time.Now().Add(3 * time.Second)
	var longest time.Duration // a batch's: a round can wait that long behind one
	for time.Now().Before(deadline) {
		start := time.Now()
		if err := s.set.Ingest(b); err != nil {
			t.Fatal(err)
		}
		longest = max(longest, time.Since(start))
	}
	stop.Store(true)
	wg.Wait()
	got := time.Duration(most.Load())
	t.Logf("longest snapshot period while one device was ingested into: %v (interval %v, longest batch %v)", got, interval, longest)
	// A round that waits behind a batch takes that long, and the period
	// says so (it is what a SIGKILL may lose); pacing must not multiply
	// the wait by 1/MaxBusy on top (it made 900 ms of it).
	if got > longest+2*interval {
		t.Fatalf("rounds that collect and write one device were stretched to %v (%.1f intervals): the time their "+
			"collect ops waited in the shard queue behind ingest counted as the rounds' cost, so persistence lag grows "+
			"with ingest queueing without saving any ingest CPU", got, float64(got)/float64(interval))
	}
}

// TestReviewP_ReadDuringOutageHeldPastDeviceLimit is the shard test of the
// same name through the Writer and a real Redis: a pod at MAX_DEVICES
// answers a read of a device it does not hold while Redis is down; the
// failed load leaves the device held (unrestored, empty) instead of
// dropping it as a read at the limit must, and the loop's unrestored retry
// (every second) restores it from Redis once Redis is back, before any
// round's scan could drop it (SNAPSHOT_INTERVAL 5 s here; with the default
// 1 s it is a race the retry wins about half the time, and pacing's
// stretched periods make it win more). The pod then holds more devices
// than MAX_DEVICES, one for each device read during the outage, until
// IDLE_EVICT, though no sample was sent for them.
func TestReviewP_ReadDuringOutageHeldPastDeviceLimit(t *testing.T) {
	r := MustStartRedis(t)
	old := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	old.ingest(t, "x", 1, 2, 3)
	old.close(t)

	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: 5 * time.Second, Timeout: 300 * time.Millisecond},
		shard.Options{Shards: 2, MaxDevices: 1})
	s.ingest(t, "filler", 1) // the pod is at its device limit
	if n := s.set.Devices(); n != 1 {
		t.Fatalf("setup: %d devices held; want 1", n)
	}
	r.Stop()
	if _, _, err := s.set.Device("x"); err != nil {
		t.Fatal(err)
	}
	afterRead := s.set.Devices()
	r.Start()
	waitFor(t, "the unrestored retry to settle", func() bool { return s.set.Unrestored() == 0 && s.set.Retrying() == 0 })
	// The shard answers a read before it drops the device: allow it that
	// moment (a device held for good stays past the deadline).
	for deadline := time.Now().Add(2 * time.Second); s.set.Devices() > 1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	t.Logf("devices held: %d after the read during the outage, %d once redis is back (MAX_DEVICES 1)", afterRead, s.set.Devices())
	if n := s.set.Devices(); n > 1 {
		t.Fatalf("%d devices held with MAX_DEVICES 1: a read at the limit during a redis outage kept its device and the "+
			"unrestored retry restored it, although no sample was ever sent for it", n)
	}
}

// TestReviewP_PeriodUnderstatedWhenRoundOutlastsIt: snapshot_period_seconds
// is documented as the time "from the last round's start to the next's"
// (Writer.period), and docs/persistence.md bounds what a SIGKILL loses by
// it ("at most one period of changes is lost (SNAPSHOT_INTERVAL, or
// snapshot_period_seconds while rounds are stretched)"). loop stores
// pace(took), which MaxInterval caps, but a round that took longer than
// MaxInterval is followed at once (rounds.Reset(max(period-took, 0))): the
// rounds then start took apart, not period apart. The gauge, and the log
// line at the first stretch ("rounds now start every ..."), understate
// the period exactly when rounds are slowest: with SNAPSHOT_MAX_BUSY=1
// ("rounds then run back to back") or any round longer than ten intervals.
//
// Here: Interval 2 ms, MaxInterval 4 ms, SNAPSHOT_MAX_BUSY=1, and one
// round that writes 50,000 changed devices (tens of ms). The log line
// says the round took longer than the period it announces.
func TestReviewP_PeriodUnderstatedWhenRoundOutlastsIt(t *testing.T) {
	r := MustStartRedis(t)
	var logs syncBuf
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: 2 * time.Millisecond, MaxInterval: 4 * time.Millisecond,
		MaxBusy: 1, Timeout: 5 * time.Second, Log: zerolog.New(&logs)}, shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	time.Sleep(1100 * time.Millisecond) // past the log's rate limit, should a start-up round have stretched
	var b shard.Batch
	for i := range 50000 {
		b.Add(fmt.Appendf(nil, "many-%d", i), 1)
		b.AddMetric([]byte("m"), 1)
	}
	if err := s.set.Ingest(&b); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`a snapshot round took ([0-9.]+[a-zµ]+): rounds now start every ([0-9.]+[a-zµ]+),`)
	var (
		m           []string
		took, every time.Duration
	)
	waitFor(t, "the big round's stretch logged", func() bool {
		for _, m = range re.FindAllStringSubmatch(logs.String(), -1) {
			var err1, err2 error
			took, err1 = time.ParseDuration(m[1])
			every, err2 = time.ParseDuration(m[2])
			if err1 != nil || err2 != nil {
				t.Fatalf("cannot parse %q: %v %v", m[0], err1, err2)
			}
			if took > 4*time.Millisecond {
				return true
			}
		}
		return false
	})
	t.Logf("logged: %s", m[0])
	if every < took {
		t.Fatalf("a round took %v and the period reported is %v: rounds cannot start more often than they take; "+
			"snapshot_period_seconds (and the log) understate what a SIGKILL loses", took, every)
	}
}

// TestReviewP_LongRoundOutlivesTTLRule: docs/persistence.md says a
// stretched round never comes "so late that SNAPSHOT_TTL could expire a
// key whose device is still in memory", and main.go accepts any
// SNAPSHOT_TTL above IDLE_EVICT plus two intervals, passing MaxInterval =
// min(10 x interval, (TTL - IDLE_EVICT) / 2) as the bound that keeps the
// rule. But nothing bounds the gap between rounds by MaxInterval: a round
// that takes longer (here its flush waits for a stalled Redis; a large
// fleet's collect does the same) is followed at once, and that next round
// evicts by the clock it starts at. A clean device idle for IDLE_EVICT is
// then dropped from memory after its key, written once when it last
// changed, has expired: the device's acknowledged state exists nowhere,
// and it comes back empty.
//
// Here, with main's rule and formula: SNAPSHOT_INTERVAL 100 ms, IDLE_EVICT
// 2 s, SNAPSHOT_TTL 2.25 s (valid: above 2.2 s). Device x gets a sample at
// T and is written at once. At T+1.7 s Redis stalls for 1 s while another
// device has a change to write; the round that meets the stall ends at
// ~T+2.7 s, and the next, at once, evicts x (idle 2.7 s); x's key expired
// at ~T+2.35 s. Reading x then finds nothing. Correct: a device is never
// dropped from memory once its key may have expired (its sample stays
// readable).
func TestReviewP_LongRoundOutlivesTTLRule(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	const (
		interval = 100 * time.Millisecond
		idle     = 2 * time.Second
		ttl      = 2250 * time.Millisecond
	)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: interval, TTL: ttl, Timeout: 3 * time.Second,
		MaxInterval: min(10*interval, (ttl-idle)/2)}, shard.Options{Shards: 2, IdleEvict: idle})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "y", 1) // held, so that its change below needs no load
	waitFor(t, "y written", func() bool { return stored(t, c, "y") != nil })
	start := time.Now()
	s.ingest(t, "x", 7)
	waitFor(t, "x written", func() bool { return stored(t, c, "x") != nil })
	time.Sleep(time.Until(start.Add(1700 * time.Millisecond)))
	if err := c.Do(context.Background(), c.B().Arbitrary("CLIENT", "PAUSE").Args("1000", "ALL").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.ingest(t, "y", 2) // the next round's flush meets the stall
	evicted := s.set.Evicted()
	waitFor(t, "x evicted", func() bool { return s.set.Evicted() > evicted })
	at := time.Since(start)
	st, ok := s.state(t, "x")
	t.Logf("x evicted about %v after its sample (IDLE_EVICT %v, SNAPSHOT_TTL %v); read back: %v %+v",
		at.Round(10*time.Millisecond), idle, ttl, ok, st)
	if !ok || st.Count != 1 {
		t.Fatalf("device x lost its acknowledged sample: evicted ~%v after it, when its key (TTL %v, written once) "+
			"had expired; a round longer than MaxInterval broke the TTL rule main.go checks", at.Round(10*time.Millisecond), ttl)
	}
}
