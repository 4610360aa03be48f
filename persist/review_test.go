package persist

// Regression tests from a hostile review of the persister: each comment tells
// the defect as it was found; the test checks that it stays fixed.

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/redis/rueidis"
)

// denyKey makes Redis refuse every command on device dev's key (NOPERM, an
// error reply about that key alone) while the rest of Redis works: the
// default user keeps every other key.
func denyKey(tb testing.TB, c rueidis.Client, dev string) {
	tb.Helper()
	// Every key but dev's: ACL patterns cannot exclude, so allow the
	// other keys the tests use by prefix.
	if err := c.Do(context.Background(), c.B().Arbitrary("ACL", "SETUSER", "default").
		Args("resetkeys", "~aiload:dev:g*", "~aiload:dev:known*", "~aiload:dev:new*").Build()).Error(); err != nil {
		tb.Fatal(err)
	}
	if err := c.Do(context.Background(), c.B().Get().Key("aiload:dev:"+dev).Build()).Error(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		tb.Fatalf("test premise: GET of %s: %v; want NOPERM", dev, err)
	}
}

// TestReviewOneFailingLoadLosesEveryOtherDevice: Redis healthy, but one
// device's key cannot be read (an ACL denies it: a persistent error reply
// about that key alone). That device stays unrestored, and Writer.Stop's
// reconcile retried it until the whole stop budget had run out, so the
// final flush ran on an expired context and "good", acknowledged and
// loaded normally, was not written. Reconciling now gets half the budget:
// good is written, and the report says bad could not be reconciled.
func TestReviewOneFailingLoadLosesEveryOtherDevice(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	denyKey(t, c, "bad")
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 500 * time.Millisecond},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "good", 1, 2, 3)
	s.ingest(t, "bad", 1)
	if s.set.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d; want 1 (bad)", s.set.Unrestored())
	}
	sealErr, rep, err := s.stop(4 * time.Second) // main.go flushTimeout
	if sealErr != nil {
		t.Fatal(sealErr)
	}
	if st := stored(t, c, "good"); st == nil || st.Streams[0].Count != 3 {
		t.Fatalf("device \"good\" (3 samples answered 200, Redis healthy) not written at stop: redis holds %+v; report %+v", st, rep)
	}
	if err == nil || rep.Unreconciled != 1 || rep.Written != 1 {
		t.Fatalf("stop: %+v, %v; want good written and bad reported not reconciled", rep, err)
	}
}

// TestWrongTypeKeyIsCorrupt: a device key holding another type (WRONGTYPE)
// is treated like a corrupt value: counted, the device starts fresh, and
// its next snapshot replaces the key.
func TestWrongTypeKeyIsCorrupt(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	if err := c.Do(context.Background(), c.B().Lpush().Key("aiload:dev:listy").Element("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "listy", 1, 2)
	if s.set.Unrestored() != 0 || s.w.corrupt.Get() != 1 {
		t.Fatalf("unrestored %d, corrupt %d; want 0 and 1", s.set.Unrestored(), s.w.corrupt.Get())
	}
	waitFor(t, "the key replaced by a snapshot", func() bool {
		b, err := c.Do(context.Background(), c.B().Get().Key("aiload:dev:listy").Build()).AsBytes()
		if err != nil {
			return false // still the list
		}
		st, err := shard.DecodeSnapshot(b)
		return err == nil && st.Streams[0].Count == 2
	})
}

// TestReviewStopReportOmitsAckedLoss: Redis stops answering (SIGSTOP: the
// connection stays open) while a new device's first load is in flight.
// stopState's Seal runs out of its budget, Writer.Stop then finds nothing
// dirty and nothing unrestored (the device is still *loading*, which
// neither count covers) and reports success: no error, 0 not written, 0
// not reconciled. Closing the Writer fails the load, the device goes
// unrestored, the parked sample is applied and Ingest returns nil (200):
// an acknowledged sample no snapshot holds, under a report saying nothing
// was lost.
func TestReviewStopReportOmitsAckedLoss(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 3 * time.Second},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	proc := r.cmd.Process
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer proc.Signal(syscall.SIGCONT) //nolint:errcheck
	ingested := make(chan error, 1)
	go func() {
		var b shard.Batch
		b.Add([]byte("new"), 1)
		b.AddMetric([]byte("m"), 42)
		ingested <- s.set.Ingest(&b)
	}()
	time.Sleep(100 * time.Millisecond) // its load is waiting on redis
	sealErr, rep, stopErr := s.stop(time.Second)
	ackErr := <-ingested
	t.Logf("seal: %v; Writer.Stop: %+v, %v; ingest: %v", sealErr, rep, stopErr, ackErr)
	if ackErr == nil && stopErr == nil && rep.Pending == 0 && rep.Unreconciled == 0 {
		t.Fatalf("sample acknowledged after the final snapshot, and the stop report says nothing was lost: %+v", rep)
	}
}

// TestReviewPoisonedKeyFailsOtherLoads: the same unreadable key during
// normal operation. Its device is retried every second, and each retry's
// error reply marked Redis down, so for the next second every other load
// failed at once: devices stored in a healthy Redis came back unrestored
// (count 1 instead of 4). An error reply about one key no longer does.
func TestReviewPoisonedKeyFailsOtherLoads(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	storeKnown(t, r.addr, 10)
	denyKey(t, c, "bad")
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 500 * time.Millisecond},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "bad", 1)
	if s.set.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d; want 1 (bad)", s.set.Unrestored())
	}
	fresh := s.unrestoredKnown(t, 10)
	t.Logf("%d of 10 stored devices came back with fresh state; restore_failures_total %d", fresh, s.w.loadFailures.Get())
	if fresh > 0 {
		t.Fatalf("%d of 10 devices stored in a healthy Redis were served unrestored because one other key is unreadable", fresh)
	}
}

// An eviction after the key's TTL (SNAPSHOT_TTL below IDLE_EVICT) reloaded
// nothing: main.go now refuses such settings (TestParseConfig).
