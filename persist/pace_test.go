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
	most, sent := loadWatchingPeriod(t, s, devices, 2*time.Second)
	if most <= interval {
		t.Errorf("longest period under load %s; want it stretched above %s", most, interval)
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
		p := time.Duration(s.w.period.Load())
		return p == interval || p < most/2
	})
}

// loadWatchingPeriod changes devices devices (pace-0, pace-1, ...) over and
// over for d, and returns the longest period the gauge showed meanwhile
// and the samples each device was sent.
func loadWatchingPeriod(t *testing.T, s *stack, devices int, d time.Duration) (time.Duration, []int) {
	t.Helper()
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
	defer wg.Wait()
	defer stop.Store(true)
	deadline := time.Now().Add(d)
	for round := 0; time.Now().Before(deadline); round++ {
		// 500 devices a request, so a pass is quick and every round
		// finds most devices changed.
		for lo := 0; lo < devices; lo += 500 {
			var b shard.Batch
			for i := lo; i < min(lo+500, devices); i++ {
				b.Add(fmt.Appendf(nil, "pace-%d", i), 1)
				b.AddMetric([]byte("m"), float64(round))
				sent[i]++
			}
			if err := s.set.Ingest(&b); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	return time.Duration(most.Load()), sent
}

// A round longer than MaxInterval runs back to back with the next, and the
// period gauge (what a SIGKILL may lose) says the round's length, not the
// cap: it said 10 ms while rounds took far longer.
func TestPeriodReportsRoundsLongerThanTheCap(t *testing.T) {
	r := MustStartRedis(t)
	const interval = 10 * time.Millisecond
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: interval, Timeout: 5 * time.Second,
		MaxBusy: 1, MaxInterval: interval}, shard.Options{Shards: 2})
	// 20,000 changed devices take well over 10 ms to encode and write.
	if most, _ := loadWatchingPeriod(t, s, 20000, time.Second); most <= interval {
		t.Errorf("longest period %s while rounds of 20,000 devices ran; want more than %s", most, interval)
	}
}
