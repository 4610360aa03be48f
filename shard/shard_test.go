package shard

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"ai-load-service/shard/detect"
)

func MustNewSet(tb testing.TB, o Options) *Set {
	tb.Helper()
	s := New(o)
	tb.Cleanup(s.Stop)
	return s
}

// batchOf builds a batch of one metric per sample: devices[i] gets vals[i].
func batchOf(devices []string, metric string, vals []float64) *Batch {
	b := new(Batch)
	for i, d := range devices {
		b.Add([]byte(d), int64(i))
		b.AddMetric([]byte(metric), vals[i])
	}
	return b
}

// exactStats computes the mean and population stddev of xs with 256-bit
// floats, the reference the shard's sums must match (as detect's window
// tests do for a Window).
func exactStats(xs []float64) (mean, stddev float64) {
	const prec = 256
	n := new(big.Float).SetPrec(prec).SetInt64(int64(len(xs)))
	sum := new(big.Float).SetPrec(prec)
	for _, x := range xs {
		sum.Add(sum, new(big.Float).SetPrec(prec).SetFloat64(x))
	}
	m := new(big.Float).SetPrec(prec).Quo(sum, n)
	ss := new(big.Float).SetPrec(prec)
	for _, x := range xs {
		d := new(big.Float).SetPrec(prec).SetFloat64(x)
		d.Sub(d, m)
		ss.Add(ss, d.Mul(d, d))
	}
	v := ss.Quo(ss, n)
	mean, _ = m.Float64()
	stddev, _ = new(big.Float).SetPrec(prec).Sqrt(v).Float64()
	return mean, stddev
}

func TestRulesApplyPerMetric(t *testing.T) {
	rules, err := detect.ParseRules([]byte(`{"rules":[{"match":"temp*","detector":"zscore","window":4,"min_samples":2,"cooldown":0}]}`), detect.Params{
		Kind: detect.EWMA, Window: 50, MinSamples: 10, Threshold: 3, MinStddev: 1e-9, Cooldown: 5})
	if err != nil {
		t.Fatal(err)
	}
	s := MustNewSet(t, Options{Shards: 1, Detector: detect.EWMA, Cooldown: 5, Rules: rules})
	b := new(Batch)
	for i := range 6 {
		b.Reset()
		b.Add([]byte("d"), int64(i))
		b.AddMetric([]byte("temp_c"), float64(i))
		b.AddMetric([]byte("hum"), float64(i))
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	ms, _, _ := s.Device("d")
	if ms[0].Detector != detect.ZScore || ms[0].Window != 4 || ms[1].Detector != detect.EWMA || ms[1].Window != 6 {
		t.Fatalf("rules not applied: %+v", ms)
	}
}

func TestIngestAnomaliesInSampleOrder(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 7, MinSamples: 3, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1})
	devs := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}
	for range 5 {
		b := batchOf(devs, "m", make([]float64, len(devs)))
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
		if len(b.Anomalies) != 0 {
			t.Fatalf("unexpected anomalies on a flat series: %v", b.Anomalies)
		}
	}
	// Every device spikes, in reverse order, twice per device in one batch.
	var order []string
	for i := len(devs) - 1; i >= 0; i-- {
		order = append(order, devs[i])
	}
	order = append(order, order...)
	b := batchOf(order, "m", []float64{9, 9, 9, 9, 9, 9, 9, 9, 9, -9, -9, -9, -9, -9, -9, -9, -9, -9})
	if err := s.Ingest(b); err != nil {
		t.Fatal(err)
	}
	if len(b.Anomalies) != len(order) {
		t.Fatalf("unexpected anomaly count; got %d; want %d", len(b.Anomalies), len(order))
	}
	for i, a := range b.Anomalies {
		if a.Device != order[i] || a.TS != int64(i) {
			t.Fatalf("anomaly %d: got device %q ts %d; want %q ts %d", i, a.Device, a.TS, order[i], i)
		}
	}
	if got := s.Devices(); got != len(devs) {
		t.Fatalf("unexpected device count; got %d; want %d", got, len(devs))
	}
}

func TestIngestOverloadAppliesNothing(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 2, QueueLen: 1})
	// Find a device on each shard.
	var devs [2]string
	for i := 0; devs[0] == "" || devs[1] == ""; i++ {
		d := "dev" + strconv.Itoa(i)
		devs[s.ShardOf([]byte(d))] = d
	}
	// Shard 1's queue is full: a batch touching both shards must fail whole.
	s.shards[1].pending.Store(1)
	b := batchOf(devs[:], "m", []float64{1, 2})
	if err := s.Ingest(b); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("unexpected error; got %v; want ErrOverloaded", err)
	}
	if got := s.shards[0].pending.Load(); got != 0 {
		t.Fatalf("shard 0 reservation leaked; pending=%d", got)
	}
	s.shards[1].pending.Store(0)
	if _, ok, _ := s.Device(devs[0]); ok {
		t.Fatalf("device %q was applied from a rejected batch", devs[0])
	}
	if err := s.Ingest(batchOf(devs[:], "m", []float64{1, 2})); err != nil {
		t.Fatal(err)
	}
	if got := s.Devices(); got != 2 {
		t.Fatalf("unexpected device count; got %d; want 2", got)
	}
}

func TestStop(t *testing.T) {
	s := New(Options{Shards: 3})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				err := s.Ingest(batchOf([]string{fmt.Sprint(g, "-", i%10)}, "m", []float64{1}))
				if errors.Is(err, ErrStopped) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	s.Stop()
	wg.Wait()
	if err := s.Ingest(batchOf([]string{"x"}, "m", []float64{1})); !errors.Is(err, ErrStopped) {
		t.Fatalf("unexpected error after Stop; got %v; want ErrStopped", err)
	}
	if _, _, err := s.Device("x"); !errors.Is(err, ErrStopped) {
		t.Fatalf("unexpected error after Stop; got %v; want ErrStopped", err)
	}
	s.Stop() // idempotent
}

func TestDeviceStateAndHistory(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 2, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1, WindowSize: 4, MinSamples: 2, HistoryLen: 3})
	for i := range 30 {
		v := 0.0
		if i%5 == 4 {
			v = float64(i) * 1e6 // each spike follows a flat window
		}
		b := new(Batch)
		b.Add([]byte("dev"), int64(i))
		b.AddMetric([]byte("temp"), v)
		b.AddMetric([]byte("hum"), 5)
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	ms, ok, err := s.Device("dev")
	if err != nil || !ok {
		t.Fatalf("device missing: %v", err)
	}
	if len(ms) != 2 || ms[0].Name != "temp" || ms[1].Name != "hum" {
		t.Fatalf("unexpected metrics %+v", ms)
	}
	if m := ms[1]; m.Count != 30 || m.Window != 4 || m.Mean != 5 || m.Stddev != 0 || m.Last != 5 || m.UpdatedTS != 29 {
		t.Fatalf("unexpected hum state %+v", m)
	}
	as, ok, _ := s.Anomalies("dev")
	if !ok || len(as) != 3 {
		t.Fatalf("unexpected history; got %d entries; want 3 (bounded)", len(as))
	}
	for i := 1; i < len(as); i++ {
		if as[i-1].TS <= as[i].TS {
			t.Fatalf("history not newest first: %+v", as)
		}
	}
	if uint64(len(as)) > ms[0].Anomalies {
		t.Fatalf("history longer than the anomaly count %d", ms[0].Anomalies)
	}
	if _, ok, _ := s.Device("nope"); ok {
		t.Fatal("unknown device reported as found")
	}
}

func TestSummarize(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 3, WindowSize: 3})
	vals := map[string][]float64{"a": {1, 2, 3, 4}, "b": {10, 20}, "c": {-5}}
	for d, xs := range vals {
		for _, x := range xs {
			if err := s.Ingest(batchOf([]string{d}, "m", []float64{x})); err != nil {
				t.Fatal(err)
			}
		}
	}
	sum, err := s.Summarize()
	if err != nil {
		t.Fatal(err)
	}
	// Windows: a=[2,3,4] b=[10,20] c=[-5].
	window := []float64{2, 3, 4, 10, 20, -5}
	wantMean, wantSD := exactStats(window)
	if sum.Devices != 3 || sum.Streams != 3 || sum.Samples != 7 || sum.Values != 6 || sum.Min != -5 || sum.Max != 20 {
		t.Fatalf("unexpected summary %+v", sum)
	}
	if d := sum.Mean - wantMean; d > 1e-12 || d < -1e-12 {
		t.Fatalf("unexpected mean; got %v; want %v", sum.Mean, wantMean)
	}
	if d := sum.Stddev - wantSD; d > 1e-12 || d < -1e-12 {
		t.Fatalf("unexpected stddev; got %v; want %v", sum.Stddev, wantSD)
	}
	by, err := s.MetricMeans()
	if err != nil {
		t.Fatal(err)
	}
	if m := by["m"]; len(by) != 1 || m.Streams != 3 || math.Abs(m.Mean-13.0/3) > 1e-12 {
		t.Fatalf("unexpected per-metric summary %+v", by)
	}
}

func TestShardOfSpread(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 8})
	var counts [8]int
	for i := range 80000 {
		counts[s.ShardOf([]byte("sensor-"+strconv.Itoa(i)))]++
	}
	for k, c := range counts {
		if c < 9000 || c > 11000 {
			t.Fatalf("shard %d got %d of 80000 devices; want about 10000", k, c)
		}
	}
}

func BenchmarkShardOf(b *testing.B) {
	s := MustNewSet(b, Options{Shards: 8})
	id := []byte("sensor-000042")
	b.ReportAllocs()
	b.SetBytes(int64(len(id)))
	for range b.N {
		_ = s.ShardOf(id)
	}
}

func BenchmarkIngest1(b *testing.B)   { benchmarkIngest(b, 1, Options{}) }
func BenchmarkIngest100(b *testing.B) { benchmarkIngest(b, 100, Options{}) }

// BenchmarkIngestDetector compares the detectors' batch ingest in one
// run: read it as ratios to zscore.
func BenchmarkIngestDetector(b *testing.B) {
	for _, k := range []detect.Kind{detect.ZScore, detect.Winsor, detect.Ranges} {
		b.Run(k.String(), func(b *testing.B) { benchmarkIngest(b, 100, Options{Detector: k}) })
	}
}

// benchmarkIngest measures Set.Ingest for batches of n samples of two
// metrics over 10,000 devices, from parallel callers.
func benchmarkIngest(b *testing.B, n int, o Options) {
	s := MustNewSet(b, o)
	ids := make([][]byte, 10000)
	for i := range ids {
		ids[i] = []byte("sensor-" + strconv.Itoa(i))
	}
	warm := new(Batch)
	for _, id := range ids {
		warm.Add(id, 0)
		warm.AddMetric([]byte("temp"), 0)
		warm.AddMetric([]byte("hum"), 0)
	}
	if err := s.Ingest(warm); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		bt := new(Batch)
		i := 0
		for pb.Next() {
			bt.Reset()
			for range n {
				i++
				bt.Add(ids[i%len(ids)], int64(i))
				bt.AddMetric([]byte("temp"), float64(i%7))
				bt.AddMetric([]byte("hum"), float64(i%11))
			}
			if err := s.Ingest(bt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "samples/s")
}

// TestHashCollisionChain forces two devices onto one hash: each must keep
// its own state.
func TestHashCollisionChain(t *testing.T) {
	long := strings.Repeat("x", 40)
	sh := &shard{devices: make(map[uint64]*device)}
	a := sh.newDevice(long+"a", 7, nil)
	sh.devices[7] = a
	b := sh.newDevice(long+"b", 7, a)
	sh.devices[7] = b
	for _, c := range []struct {
		id   string
		want *device
	}{{long + "a", a}, {long + "b", b}, {long + "c", nil}, {long, nil}, {"x", nil}} {
		if got := sh.lookup(7, []byte(c.id)); got != c.want {
			t.Fatalf("lookup(%q): got %p; want %p", c.id, got, c.want)
		}
	}
	var ns namedStream
	ns.setName("temperature-celsius1")
	for name, want := range map[string]bool{"temperature-celsius1": true, "temperature-celsius2": false, "temperature": false,
		"temperature-celsius10": false, "temperature-celsius": false} {
		if got := ns.is([]byte(name)); got != want {
			t.Fatalf("is(%q): got %v; want %v", name, got, want)
		}
	}
}

// TestStreamNameMatch checks name matching on the word-compare path, where
// the bytes after a short name in its buffer are read and must not count.
func TestStreamNameMatch(t *testing.T) {
	for _, c := range []struct {
		stream, buf string
		n           int // the name is buf[:n]; buf's other bytes are junk
		want        bool
	}{
		{"temp", "temp", 4, true}, // cap 4: the byte-wise path
		{"temp", "tempXXXX", 4, true},
		{"temp", "tempXXXX", 5, false},
		{"temp", "tempXXXX", 3, false},
		{"tempX", "tempXXXX", 5, true},
		{"temp", "tamp\x00\x00\x00\x00", 4, false},
		{"h", "hum.max-", 1, true},
		{"hum", "hum.max-", 1, false},
		{"hum.max-", "hum.max-", 8, true},
		{"hum.max-", "hum.max_", 8, false},
		{"hum.max-1", "hum.max-1", 9, true},
		{"a\x00", "a\x00\x00\x00\x00\x00\x00\x00", 1, false},
	} {
		var ns namedStream
		ns.setName(c.stream)
		name := []byte(c.buf)[:c.n:len(c.buf)]
		if got := ns.is(name); got != c.want {
			t.Errorf("stream %q is(%q, cap %d) = %v; want %v", c.stream, name, cap(name), got, c.want)
		}
	}
}

// BenchmarkShardIngestSerial is one shard applying samples of two metrics
// on the calling goroutine: the cost of the state update without channels
// or scheduling (ns/op is per sample). With 100 devices all state stays in
// cache, so the gap to 10,000 is what cache misses cost.
func BenchmarkShardIngestSerial(b *testing.B) {
	for _, devices := range []int{100, 10000} {
		b.Run("devices="+strconv.Itoa(devices), func(b *testing.B) { benchmarkShardIngestSerial(b, devices) })
	}
}

func benchmarkShardIngestSerial(b *testing.B, devices int) {
	s := MustNewSet(b, Options{Shards: 1})
	bt := new(Batch)
	for i := range devices {
		bt.Add([]byte("sensor-"+strconv.Itoa(i)), 0)
		bt.AddMetric([]byte("temp"), float64(i%7))
		bt.AddMetric([]byte("hum"), float64(i%11))
	}
	idx := make([]int32, bt.Len())
	for i := range idx {
		idx[i] = int32(i)
		bt.samples[i].hash = maphash.Bytes(s.seed, bt.Device(i))
	}
	o := &op{b: bt, idx: idx}
	s.shards[0].ingest(o) // create the devices outside the timing
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(idx) {
		o.out = o.out[:0]
		s.shards[0].ingest(o)
	}
}

// A latch wakes its waiter only after the last op, and can be reused.
func TestLatch(t *testing.T) {
	var l latch
	for round := range 3 {
		n := int32(round + 1)
		l.add(n)
		var wg sync.WaitGroup
		for i := range n {
			if i == n-1 {
				wg.Wait()
				if len(l.ch) != 0 {
					t.Fatalf("round %d: waiter woken before the last op", round)
				}
			}
			wg.Add(1)
			go func() { defer wg.Done(); l.finish() }()
		}
		l.wait()
		wg.Wait()
		if l.n.Load() != 0 || len(l.ch) != 0 {
			t.Fatalf("round %d: latch left at n=%d, %d wakeups", round, l.n.Load(), len(l.ch))
		}
	}
}

// TestAnomalousCountPerBatch reuses one Batch, as the server's pool does:
// a batch must count only its own anomalous samples, not those left in
// the ops of shards it does not touch (anomalous_samples_total went 1 -> 6
// over 20 normal single samples).
func TestAnomalousCountPerBatch(t *testing.T) {
	s := MustNewSet(t, Options{Shards: 4, Detector: detect.ZScore, ZThreshold: 3, Cooldown: -1, MinSamples: 3})
	b := new(Batch)
	ingest := func(dev string, v float64) int {
		b.Reset()
		b.Add([]byte(dev), 0)
		b.AddMetric([]byte("m"), v)
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
		return b.Anomalous
	}
	for i := range 30 {
		ingest("a", float64(i%2))
	}
	if n := ingest("a", 1000); n != 1 {
		t.Fatalf("spike: anomalous %d; want 1", n)
	}
	total := 0
	for i := range 20 {
		total += ingest(fmt.Sprint("other-", i), 1)
	}
	if total != 0 {
		t.Fatalf("20 first samples of new devices counted %d anomalous; want 0", total)
	}
}

// TestSummarizeHugeValues: values near the API's 1e150 bound must give a
// finite stddev. Merging the moments of two full 100k windows, one at 1e150
// and one at -1e150, overflowed (d²·n_a·n_b) and /analyze showed null.
func TestSummarizeHugeValues(t *testing.T) {
	const n = 100000
	s := MustNewSet(t, Options{Shards: 1, WindowSize: n})
	b := new(Batch)
	for i := range n {
		b.Add([]byte("d"), int64(i))
		b.AddMetric([]byte("a"), 1e150)
		b.AddMetric([]byte("b"), -1e150)
	}
	if err := s.Ingest(b); err != nil {
		t.Fatal(err)
	}
	sum, err := s.Summarize()
	if err != nil {
		t.Fatal(err)
	}
	if sum.Values != 2*n || math.Abs(sum.Mean) > 1e136 || math.Abs(sum.Stddev-1e150)/1e150 > 1e-12 {
		t.Fatalf("values %d mean %v stddev %v; want %d, 0, 1e150", sum.Values, sum.Mean, sum.Stddev, 2*n)
	}
}

// TestMetricMeansExact: the per-name sums kept as samples arrive equal the
// mean of the streams' window means computed from scratch, after random
// samples on many devices, idle eviction and reloads from a store, and
// devices dropped and recreated (reused slabs).
func TestMetricMeansExact(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 3, WindowSize: 7, Store: st, IdleEvict: time.Nanosecond})
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"temp", "hum", "a-rather-long-metric-name", "x"}
	devs := map[string]bool{}
	for round := range 40 {
		b := new(Batch)
		for range 50 {
			dev := fmt.Sprint("d", rng.IntN(60))
			devs[dev] = true
			b.Add([]byte(dev), int64(round))
			for _, n := range names[:1+rng.IntN(len(names))] {
				b.AddMetric([]byte(n), 1e6+rng.NormFloat64()*float64(1+round%5))
			}
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
		if round%10 == 9 {
			mustCollect(t, s, st, true)
			mustCollect(t, s, st, true) // evicts what the first handed over
		}
	}
	want := map[string][]float64{}
	for dev := range devs {
		ms, ok, err := s.Device(dev) // reloads what was evicted
		if err != nil || !ok {
			t.Fatalf("device %s: %v %v", dev, ok, err)
		}
		for _, m := range ms {
			want[m.Name] = append(want[m.Name], m.Mean)
		}
	}
	got, err := s.MetricMeans()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("names %v; want %v", got, want)
	}
	for name, means := range want {
		exact, _ := exactStats(means)
		if g := got[name]; g.Streams != len(means) || math.Abs(g.Mean-exact) > 1e-12*math.Abs(exact) {
			t.Fatalf("%s: %d streams, mean %.17g; want %d, %.17g", name, g.Streams, g.Mean, len(means), exact)
		}
	}
	if s.Evicted() == 0 {
		t.Fatal("test needs evictions")
	}
}

// BenchmarkScrape compares what a /metrics scrape asks of the shards
// (MetricMeans, O(names)) with the walk /analyze does (Summarize, O(values)),
// at 20k devices × 5 metrics with full W=50 windows.
func BenchmarkScrape(b *testing.B) {
	s := MustNewSet(b, Options{Shards: 4})
	batch := new(Batch)
	for round := range 50 {
		batch.Reset()
		for d := range 20000 {
			batch.Add([]byte(fmt.Sprint("dev-", d)), int64(round))
			for m := range 5 {
				batch.AddMetric([]byte(fmt.Sprint("m", m)), float64(d%100+m+round%3))
			}
		}
		if err := s.Ingest(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("MetricMeans", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.MetricMeans(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Summarize", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Summarize(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestHeld: Held tells whether a device is in memory, without loading it.
func TestHeld(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st})
	if err := s.Ingest(batchOf([]string{"a"}, "m", []float64{1})); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"a": true, "b": false} {
		if got, _, err := s.Held(id); err != nil || got != want {
			t.Fatalf("Held(%q) = %v, %v; want %v", id, got, err, want)
		}
	}
	if s.Devices() != 1 {
		t.Fatalf("Held loaded a device: %d devices", s.Devices())
	}
}

// TestSummaryMerge: merging summaries of two sets of streams gives the
// summary of all of them (as /analyze merges its members').
func TestSummaryMerge(t *testing.T) {
	a := MustNewSet(t, Options{Shards: 2, WindowSize: 4})
	b := MustNewSet(t, Options{Shards: 2, WindowSize: 4})
	all := MustNewSet(t, Options{Shards: 2, WindowSize: 4})
	rng := rand.New(rand.NewPCG(8, 9))
	for i := range 60 {
		dev := fmt.Sprint("d", i%9)
		v := 1e6 + rng.NormFloat64()*float64(i%5+1)
		to := a
		if i%9 >= 5 {
			to = b
		}
		for _, s := range []*Set{to, all} {
			if err := s.Ingest(batchOf([]string{dev}, "m", []float64{v})); err != nil {
				t.Fatal(err)
			}
		}
	}
	sa, _ := a.Summarize()
	sb, _ := b.Summarize()
	want, _ := all.Summarize()
	sa.Merge(sb)
	if sa.Devices != want.Devices || sa.Values != want.Values || sa.Samples != want.Samples || sa.Min != want.Min || sa.Max != want.Max ||
		math.Abs(sa.Mean-want.Mean) > 1e-9 || math.Abs(sa.Stddev-want.Stddev) > 1e-9*want.Stddev {
		t.Fatalf("merged %+v; want %+v", sa, want)
	}
	var empty Summary
	empty.Merge(want)
	if empty.Mean != want.Mean || empty.Min != want.Min || empty.Stddev != want.Stddev {
		t.Fatalf("merged into empty: %+v; want %+v", empty, want)
	}
}
