package persist

// Hostile review I of fenced writes after review H's fixes. Each failing
// test's comment says what is wrong and what is expected.

import (
	"context"
	"math"
	"testing"
	"time"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"

	"github.com/redis/rueidis"
)

// 1. TestReviewI_CorruptGenFieldFencesForever: review H's fix makes a
// device whose stored value is corrupt continue from the Gen in the
// value's header (persist.go decode: shard.HeaderGen, then
// Snapshot{Gen: g}), so that its next snapshot (Gen g+1) passes the fence.
// That trusts the one field of a corrupt value that the fence compares:
// when the corruption hits the Gen itself (here all ones, as a 0xff fill
// or a bit-flipped high byte gives), the device's gen becomes 2^64-1, its
// next snapshot's Gen wraps to 0 (shard/durable.go collect: d.gen++), and
// the script (which compares in Lua doubles) refuses every write: the
// garbage stays in Redis for good and the device's state is never
// persisted. (Any header Gen above 2^53 has the same effect for a while:
// the Lua doubles cannot tell g from g+1.) Expected: a value the loader
// calls corrupt is replaced by the device's next snapshot, whatever its
// header Gen.
func TestReviewI_CorruptGenFieldFencesForever(t *testing.T) {
	for _, gen := range []uint64{math.MaxUint64, 1<<63 | 1000} {
		r := MustStartRedis(t)
		c := r.client(t)
		ctx := context.Background()
		const dev = "dev-corrupt-gen"
		bad := append((&shard.Snapshot{Device: dev, Gen: gen, Streams: []shard.StreamSnapshot{{Name: "m", Values: []float64{1}, Count: 1,
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
			t.Fatalf("header Gen %#x: device count %d; want 5 (started fresh over the corrupt value)", gen, st.Count)
		}
		ok := false
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && !ok; time.Sleep(50 * time.Millisecond) {
			st := stored(t, c, dev)
			ok = st != nil && len(st.Streams) == 1 && st.Streams[0].Count == 5
		}
		if !ok {
			t.Errorf("corrupt value with header Gen %#x: 3 s after 5 samples the key still holds the corrupt value (fenced writes %d);\n"+
				"want it replaced by the device's snapshot (count 5): decode continues from the garbage Gen, so the next snapshot's Gen wraps to 0 or is equal to it in the script's doubles, and every write is fenced",
				gen, s.w.fenced.Get())
		}
	}
}
