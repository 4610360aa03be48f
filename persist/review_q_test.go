package persist

// Hostile review Q of b288286 (snapshot rounds written chunk by chunk as
// the shards encode them, shard.Set.CollectEach).
// Run: go test ./persist -run 'TestReviewQ' -count=1 -v

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/rs/zerolog"
)

// TestReviewQ_OutageMidRoundUndercountsFailures: write's comment says
// "After Redis fails to answer, the rest is not tried (counted failed)",
// and docs/reference.md defines snapshot_failures_total as "device
// snapshots that failed to write"; the round's log line says "%d of %d
// snapshots not written; kept for retry". Before b288286 a round flushed
// every changed device in one write, so an outage counted (and logged)
// every device left unwritten.
//
// Now round() writes chunk by chunk, and once a chunk meets Redis not
// answering, every later chunk of the round goes to keep(): into pending,
// not written, and neither counted nor logged. With one shard and 600
// changed devices (chunks of 256) and Redis gone, all 600 stay pending,
// but snapshot_failures_total grows by 256 and the log says "256 of 256
// snapshots not written". The shortfall grows with the fleet: with 16
// shards and 100k changed devices, a round counts 4,096 of 100,000.
//
// Expected: the round counts (and logs) every device it leaves unwritten:
// failures grow by 600, as many as are pending.
func TestReviewQ_OutageMidRoundUndercountsFailures(t *testing.T) {
	r := MustStartRedis(t)
	var logs syncBuf
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: time.Second,
		Log: zerolog.New(&logs)}, shard.Options{Shards: 1})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	const devices = 600
	var b shard.Batch
	for i := range devices {
		b.Add(fmt.Appendf(nil, "g%d", i), 1)
		b.AddMetric([]byte("m"), float64(i))
	}
	if err := s.set.Ingest(&b); err != nil {
		t.Fatal(err)
	}
	if n := s.set.Unrestored(); n != 0 {
		t.Fatalf("test premise: %d devices unrestored; want every device loaded (a miss)", n)
	}

	r.Stop() // Redis gone: the first chunk's write fails at once
	before := s.w.failures.Get()
	if _, _, err := s.w.round(context.Background(), false, true); err == nil {
		t.Fatal("test premise: a round with Redis down returned no error")
	}
	pending := s.w.Pending()
	failed := int(s.w.failures.Get() - before)
	line := ""
	for l := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(l, "snapshots not written") {
			line = l
		}
	}
	r.Start() // so the cleanup's stop writes them
	if pending != devices {
		t.Fatalf("test premise: %d pending after the failed round; want %d", pending, devices)
	}
	if failed != pending {
		t.Fatalf("snapshot_failures_total grew by %d for a round that left %d devices unwritten; want %d (log: %s)",
			failed, pending, pending, line)
	}
}
