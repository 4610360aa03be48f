package shard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"ai-load-service/shard/detect"
)

func TestSlabsDisjointAndReused(t *testing.T) {
	var r slabs[float64]
	// Enough rings of mixed sizes to pass the small slabs into big ones.
	var got [][]float64
	for i := range 3 * smallMax / 400 {
		n := 50 + i%3
		v := r.get(n)
		if len(v) != 0 || cap(v) != n {
			t.Fatalf("ring %d: len %d cap %d; want 0, %d", i, len(v), cap(v), n)
		}
		got = append(got, v[:n])
	}
	if r.small < smallMax {
		t.Fatalf("small slabs hold %d bytes; want %d before big slabs", r.small, smallMax)
	}
	for i, v := range got {
		for j := range v {
			v[j] = float64(i)
		}
	}
	for i, v := range got {
		for j := range v {
			if v[j] != float64(i) {
				t.Fatalf("ring %d overlaps another: [%d] = %v", i, j, v[j])
			}
		}
	}
	// A returned array comes back cleared, for the same capacity only.
	r.put(got[1][:0])
	if v := r.get(50); cap(v) != 50 || &v[:1][0] == &got[1][0] {
		t.Fatalf("capacity 51 ring reused for 50")
	}
	if v := r.get(51); &v[:1][0] != &got[1][0] || v[:51][50] != 0 {
		t.Fatalf("returned ring not reused, or not cleared")
	}
	if v := r.get(maxShared/8 + 1); cap(v) != maxShared/8+1 {
		t.Fatalf("big ring: cap %d", cap(v))
	}
}

func TestSlabsBigSlabAligned(t *testing.T) {
	var s slabs[device] // an element size that does not divide a huge page
	s.small = smallMax
	size := unsafe.Sizeof(device{})
	// Big slabs grow from one huge page to maxBig with the fleet.
	for _, want := range []int{hugePage, hugePage, 2 * hugePage, maxBig, maxBig} {
		s.grow(int(size), int(size))
		// The slab starts with the first element at or after a huge-page boundary.
		if p := uintptr(unsafe.Pointer(&s.slab[0])); p%hugePage >= size || len(s.slab)*int(size) < want {
			t.Fatalf("big slab at %#x (element size %d), %d elements; want it within one element past a %d boundary, >= %d bytes",
				p, size, len(s.slab), hugePage, want)
		}
	}
	// The part before the boundary is used once the aligned part is gone.
	if len(s.spare) > 0 {
		first := &s.spare[0]
		s.slab = s.slab[:0]
		if v := s.get(1); &v[:1][0] != first {
			t.Fatalf("the slab's part before the boundary was not used next")
		}
	}
}

// TestSlabsReusedAcrossEviction: devices evicted and new ones created reuse
// device structs, stream arrays and rings; every device's window must hold its own values only. Each stream
// sees three windows' worth of varying values, so its sums are recomputed
// from the ring and a ring shared with another stream would show.
func TestSlabsReusedAcrossEviction(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 2, Store: st, IdleEvict: time.Nanosecond, WindowSize: 8})
	fill := func(prefix string, base float64) {
		for d := range 200 {
			for k := range 24 {
				v := base + float64(d+k%4)
				ingestOne(t, s, fmt.Sprint(prefix, d), int64(k), map[string]float64{"a": v, "b": -v})
			}
		}
	}
	check := func(prefix string, base float64) {
		t.Helper()
		for d := range 200 {
			ms, ok, err := s.Device(fmt.Sprint(prefix, d))
			if err != nil || !ok || len(ms) != 2 {
				t.Fatalf("%s%d: %v %v %+v", prefix, d, ok, err, ms)
			}
			want := base + float64(d) + 1.5 // the last 8 values cycle 0..3 twice
			if ms[0].Mean != want || ms[1].Mean != -want || math.Abs(ms[0].Stddev-math.Sqrt(1.25)) > 1e-12 || ms[0].Window != 8 {
				t.Fatalf("%s%d holds values not its own: %+v", prefix, d, ms)
			}
		}
	}
	fill("old-", 1000)
	mustCollect(t, s, st, false)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatalf("%d devices not evicted", s.Devices())
	}
	fill("new-", 5000) // takes the evicted devices' rings
	check("new-", 5000)
	check("old-", 1000) // reloaded from the store into rings of their own
	check("new-", 5000)
}

// TestManyMetricsPerDevice grows one device's stream array one at a time up
// to indexAt and by doubling past it, all through the slabs; every stream
// must keep its own state, also after eviction and reload.
func TestManyMetricsPerDevice(t *testing.T) {
	st := newMemStore()
	s := MustNewSet(t, Options{Shards: 1, Store: st, IdleEvict: time.Nanosecond, WindowSize: 4})
	const metrics = 3*indexAt + 1
	for round := range 3 {
		for m := range metrics {
			ingestOne(t, s, "wide", int64(round), map[string]float64{fmt.Sprint("m", m): float64(100*m + round)})
		}
	}
	check := func(when string) {
		t.Helper()
		ms, ok, err := s.Device("wide")
		if err != nil || !ok || len(ms) != metrics {
			t.Fatalf("%s: %d streams, %v, %v; want %d", when, len(ms), ok, err, metrics)
		}
		for m, got := range ms {
			if got.Name != fmt.Sprint("m", m) || got.Count != 3 || got.Mean != float64(100*m+1) {
				t.Fatalf("%s: stream %d is %+v; want m%d, count 3, mean %d", when, m, got, m, 100*m+1)
			}
		}
	}
	check("in memory")
	mustCollect(t, s, st, false)
	time.Sleep(time.Millisecond)
	mustCollect(t, s, st, true)
	if s.Devices() != 0 {
		t.Fatalf("not evicted")
	}
	check("reloaded")
}

// TestSlabsEverySize asks for arrays at every boundary of the slabs' sizes
// (first slab, each small slab, the small/big switch, the shared/heap
// switch), from fresh slabs and from slabs part used, and checks each has
// the capacity asked for. A small slab smaller than the array asked for
// crashed WINDOW_SIZE 8193-32768 on the first sample.
func TestSlabsEverySize(t *testing.T) {
	const size = 8 // float64
	var sizes []int
	for _, bytes := range []int{firstSlab, 2 * firstSlab, smallMax / 2, smallMax, maxShared, hugePage} {
		for _, d := range []int{-1, 0, 1} {
			if n := bytes/size + d; n > 0 {
				sizes = append(sizes, n)
			}
		}
	}
	sizes = append(sizes, 1, 2, 10000, 32768, 32769)
	for _, used := range []int{0, 1, firstSlab/size - 1, smallMax / size, smallMax/size + 3} {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("used=%d/n=%d", used, n), func(t *testing.T) {
				var s slabs[float64]
				for used := used; used > 0; {
					k := min(used, maxShared/size)
					s.get(k)
					used -= k
				}
				for range 3 {
					v := s.get(n)
					if len(v) != 0 || cap(v) != n {
						t.Fatalf("get(%d): len %d cap %d", n, len(v), cap(v))
					}
					v = v[:n]
					v[0], v[n-1] = 1, 1
				}
			})
		}
	}
}

// TestWindowSizesIngest runs samples through a Set at window sizes around
// every slab boundary, as WINDOW_SIZE=10000 go run . would.
func TestWindowSizesIngest(t *testing.T) {
	for _, w := range []int{2, 8191, 8192, 8193, 10000, 16384, 16385, 32767, 32768, 32769, 100000} {
		s := MustNewSet(t, Options{Shards: 1, WindowSize: w})
		for i := range 3 {
			b := new(Batch)
			b.Add([]byte("d"), int64(i))
			b.AddMetric([]byte("m"), float64(i))
			if err := s.Ingest(b); err != nil {
				t.Fatal(err)
			}
		}
		if ms, ok, _ := s.Device("d"); !ok || ms[0].Window != min(3, w) {
			t.Fatalf("W=%d: device state %v %v", w, ms, ok)
		}
	}
}

// TestRingsGrowWithValues: a window's ring holds about the values it has,
// not W, and grows from the slabs without changing a single bit of what the
// detector computes (compared with a window allocated at W up front).
func TestRingsGrowWithValues(t *testing.T) {
	const w = 1000
	s := MustNewSet(t, Options{Shards: 1, WindowSize: w, Detector: detect.Winsor})
	ref := detect.NewStream(w)
	p := s.params
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 3 * w {
		x := 1e6 + rng.NormFloat64()
		if i%97 == 0 {
			x += 50
		}
		b := new(Batch)
		b.Add([]byte("d"), int64(i))
		b.AddMetric([]byte("m"), x)
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
		sc := ref.Observe(x, int64(i), &p)
		ms, _, _ := s.Device("d")
		mean, sd := ref.Win.Stats()
		if ms[0].LastZ != sc.Z || ms[0].Mean != mean || ms[0].Stddev != sd {
			t.Fatalf("sample %d: z %v mean %v sd %v; want %v %v %v", i, ms[0].LastZ, ms[0].Mean, ms[0].Stddev, sc.Z, mean, sd)
		}
		if n := i + 1; n < w {
			var c int
			for _, d := range s.shards[0].devices {
				c = cap(d.streams[0].Win.Buf())
			}
			if c < n || c > max(2*n, firstRing) {
				t.Fatalf("%d values in a ring of capacity %d", n, c)
			}
		}
	}
}

// TestMemoryFollowsValues: many streams with a huge W and few values take
// memory for their values, not for W (every ring was allocated at W: 50k
// devices at W=100000 under eviction churn were OOM-killed at 24 GB).
func TestMemoryFollowsValues(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := MustNewSet(t, Options{Shards: 2, WindowSize: 100000})
	b := new(Batch)
	for round := range 10 {
		b.Reset()
		for d := range 500 {
			b.Add([]byte(fmt.Sprint("dev-", d)), int64(round))
			b.AddMetric([]byte("a"), float64(round))
			b.AddMetric([]byte("b"), float64(d))
		}
		if err := s.Ingest(b); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	// 1,000 streams of 10 values; at W it would be 1,000 × 800 KB.
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 32<<20 {
		t.Fatalf("heap grew by %d MiB for 1,000 streams of 10 values", grew>>20)
	}
}
