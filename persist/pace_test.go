package persist

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/redis/rueidis"
)

func TestPace(t *testing.T) {
	w := &Writer{opts: Options{Interval: time.Second, MaxBusy: 0.25, MaxInterval: 10 * time.Second}}
	for _, c := range []struct {
		took, want time.Duration
	}{
		{0, time.Second},
		{200 * time.Millisecond, time.Second},
		{250 * time.Millisecond, time.Second},
		{500 * time.Millisecond, 2 * time.Second},
		{2 * time.Second, 8 * time.Second},
		{5 * time.Second, 10 * time.Second}, // capped by MaxInterval
		{time.Hour, 10 * time.Second},
	} {
		if got := w.pace(c.took); got != c.want {
			t.Errorf("pace(%s) = %s; want %s", c.took, got, c.want)
		}
	}
}

func TestNewDefaultsPacing(t *testing.T) {
	for _, c := range []struct {
		in                Options
		busy              float64
		interval, longest time.Duration
	}{
		{Options{}, 0.25, time.Second, 10 * time.Second},
		{Options{Interval: 200 * time.Millisecond, MaxBusy: 1}, 1, 200 * time.Millisecond, 2 * time.Second},
		{Options{Interval: time.Second, MaxBusy: 3}, 0.25, time.Second, 10 * time.Second},
		// A MaxInterval under Interval would make rounds more frequent
		// than asked: it is raised to Interval.
		{Options{Interval: time.Second, MaxInterval: time.Millisecond}, 0.25, time.Second, time.Second},
	} {
		c.in.Addrs = []string{"127.0.0.1:1"}
		w := New(c.in)
		w.cancel()
		w.wg.Wait()
		if w.opts.MaxBusy != c.busy || w.opts.Interval != c.interval || w.opts.MaxInterval != c.longest {
			t.Errorf("New(%+v): MaxBusy %g, Interval %s, MaxInterval %s; want %g, %s, %s",
				c.in, w.opts.MaxBusy, w.opts.Interval, w.opts.MaxInterval, c.busy, c.interval, c.longest)
		}
	}
}

// A fleet whose rounds take longer than MaxBusy of the interval is
// snapshotted less often (the period gauge says how often), every change
// still reaches Redis, and the period comes back down once rounds are cheap.
func TestSlowRoundsStretchTheInterval(t *testing.T) {
	r := MustStartRedis(t)
	// 20,000 changed devices a round (about 3 MB of SETs) take well over
	// the 5 ms that 10% of 50 ms allows; a round with nothing to write
	// takes far less (its eviction scan of the 20,000 devices can still
	// take more than 5 ms under the race detector).
	const (
		devices  = 20000
		interval = 50 * time.Millisecond
		longest  = 500 * time.Millisecond
	)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: interval, Timeout: 5 * time.Second,
		MaxBusy: 0.1, MaxInterval: longest}, shard.Options{Shards: 2})
	var (
		stop atomic.Bool
		wg   sync.WaitGroup
		most atomic.Int64
		sent = make([]int, devices)
	)
	wg.Go(func() {
		for !stop.Load() {
			if p := s.w.period.Load(); p > most.Load() {
				most.Store(p)
			}
			time.Sleep(time.Millisecond)
		}
	})
	deadline := time.Now().Add(2 * time.Second)
	for round := 0; time.Now().Before(deadline); round++ {
		for i := range devices {
			var b shard.Batch
			b.Add(fmt.Appendf(nil, "pace-%d", i), 1)
			b.AddMetric([]byte("m"), float64(round))
			if err := s.set.Ingest(&b); err != nil {
				t.Fatal(err)
			}
			sent[i]++
		}
	}
	stop.Store(true)
	wg.Wait()
	if got := time.Duration(most.Load()); got <= interval || got > longest {
		t.Errorf("longest period under load %s; want it stretched above %s, up to %s", got, interval, longest)
	}
	c := r.client(t)
	waitFor(t, "every device's last sample in Redis", func() bool {
		cmds := make(rueidis.Commands, devices)
		for i := range cmds {
			cmds[i] = c.B().Get().Key(fmt.Sprint("aiload:dev:pace-", i)).Build()
		}
		for i, res := range c.DoMulti(context.Background(), cmds...) {
			b, err := res.AsBytes()
			if err != nil {
				return false
			}
			snap, err := shard.DecodeSnapshot(b)
			if err != nil || len(snap.Streams) != 1 || snap.Streams[0].Count != uint64(sent[i]) {
				return false
			}
		}
		return true
	})
	waitFor(t, "the period back down once rounds are cheap", func() bool {
		p := s.w.period.Load()
		return time.Duration(p) == interval || p < most.Load()/2
	})
}
