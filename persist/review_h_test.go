package persist

// Hostile review H of fenced snapshot writes. Each failing test's comment
// says what is wrong and what is expected.

import (
	"context"
	"testing"
	"time"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"

	"github.com/redis/rueidis"
)

// 1. TestReviewH_FenceKeepsCorruptSnapshotForever: a corrupt value is
// documented to be counted and replaced: "the device starts fresh; its
// next snapshot replaces the key" (docs/persistence.md, persist.go
// decode). With Fence (every cluster member with Redis, main.go), the
// script reads a Gen from any value with a version-2 header
// (persist.go fencedSet), whether or not the rest decodes, and refuses to
// write over it while that Gen is greater or equal. The device started
// fresh has Gen 0, so its snapshots (Gen 1, 2, ...) are all fenced: the
// garbage stays, the device's state is never persisted, and each restart
// or handoff through Redis loses it again. Expected: a value the loader
// took for corrupt is written over, as without Fence.
func TestReviewH_FenceKeepsCorruptSnapshotForever(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	ctx := context.Background()
	const dev = "dev-corrupt"
	// A version-2 snapshot with a valid header (Gen 1000) whose body does
	// not decode: a trailing byte (as a bit flip, a truncated copy, or a
	// value another build wrote would do).
	bad := append((&shard.Snapshot{Device: dev, Gen: 1000, Streams: []shard.StreamSnapshot{{Name: "m", Values: []float64{1}, Count: 1,
		Sums: detect.WindowSums{Ref: 1}}}}).AppendBinary(nil), 0xff)
	if _, err := shard.DecodeSnapshot(bad); err == nil {
		t.Fatal("the test's value decodes; it must be corrupt")
	}
	if err := c.Do(ctx, c.B().Set().Key("aiload:dev:"+dev).Value(rueidis.BinaryString(bad)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond, Fence: true},
		shard.Options{Shards: 2})
	s.ingest(t, dev, 1, 2, 3, 4, 5)
	if st, _ := s.state(t, dev); st.Count != 5 {
		t.Fatalf("device count %d; want 5 (started fresh over the corrupt value)", st.Count)
	}
	if got := s.w.corrupt.Get(); got != 1 {
		t.Fatalf("restore_corrupt_total %d; want 1", got)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if st := stored(t, c, dev); st != nil && len(st.Streams) == 1 && st.Streams[0].Count == 5 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	raw, _ := c.Do(ctx, c.B().Get().Key("aiload:dev:"+dev).Build()).AsBytes()
	t.Fatalf("3 s after 5 samples the key still holds the corrupt value (%v; the loader called it corrupt), fenced writes %d;\n"+
		"want it replaced by the device's snapshot (count 5), as documented: the fence reads Gen 1000 from the garbage's header and refuses every write of the fresh device",
		string(raw) == string(bad), s.w.fenced.Get())
}
