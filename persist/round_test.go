package persist

import (
	"context"
	"fmt"
	"testing"
	"time"

	"ai-load-service/shard"
)

// TestRoundKeepsRefusedSnapshotIntact: a round writes chunk by chunk from
// memory the shards reuse for the next chunk. A snapshot Redis refuses (an
// ACL) stays pending, so it must be copied out of that memory first:
// written once Redis accepts it, it is still its own device's state, not
// bytes of a device encoded after it.
func TestRoundKeepsRefusedSnapshotIntact(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 5 * time.Second},
		shard.Options{Shards: 1})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "x", 7)
	if _, _, err := s.w.round(context.Background(), false, true); err != nil || s.w.Pending() != 0 {
		t.Fatalf("first round: %v, %d pending", err, s.w.Pending())
	}
	for i := range 1000 { // several chunks
		s.ingest(t, fmt.Sprint("g", i), float64(i))
	}
	// Touched last: encoded in the first chunk (a shard takes its most
	// recent changes first), before the shard reuses that memory.
	s.ingest(t, "x", 8, 9)
	denyWrites(t, c, "x")
	if _, _, err := s.w.round(context.Background(), false, true); err != nil {
		t.Fatal(err)
	}
	if n := s.w.Pending(); n != 1 {
		t.Fatalf("%d pending after a round with one refused key; want 1", n)
	}
	if err := c.Do(context.Background(), c.B().Arbitrary("ACL", "SETUSER", "default").Args("allkeys").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.w.flush(context.Background()); err != nil || s.w.Pending() != 0 {
		t.Fatalf("flush: %v, %d pending", err, s.w.Pending())
	}
	got := stored(t, c, "x")
	if got == nil || got.Device != "x" || len(got.Streams) != 1 || got.Streams[0].Count != 3 {
		t.Fatalf("x stored as %+v; want device x with 3 samples", got)
	}
	for _, id := range []string{"g0", "g500", "g999"} {
		if got := stored(t, c, id); got == nil || got.Device != id {
			t.Fatalf("%s stored as %+v", id, got)
		}
	}
}

// TestRoundCutShortByStop: Stop cancels the loop's context, which cuts a
// round's writes short. That is no Redis failure: nothing is counted or
// logged, loads do not fail fast (the stop's reconcile needs them), and
// what was not written stays pending for the stop's last round.
func TestRoundCutShortByStop(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 5 * time.Second},
		shard.Options{Shards: 1})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	for i := range 600 {
		s.ingest(t, fmt.Sprint("g", i), float64(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.w.round(ctx, false, true); err == nil {
		t.Fatal("a round with its context cancelled wrote everything")
	}
	if n := s.w.Pending(); n != 600 {
		t.Fatalf("%d pending; want all 600", n)
	}
	if f, e, down := s.w.failures.Get(), s.w.redisErrors.Get(), s.w.downUntil.Load(); f != 0 || e != 0 || down != 0 {
		t.Fatalf("snapshot_failures_total %d, redis_errors_total %d, loads failing fast until %d; want 0, 0, 0", f, e, down)
	}
	if _, rep, err := s.stop(5 * time.Second); err != nil || rep.Written != 600 {
		t.Fatalf("stop: %v, wrote %d; want all 600", err, rep.Written)
	}
}
