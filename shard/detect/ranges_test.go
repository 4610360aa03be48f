package detect

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestRangesNAB scores Ranges on NAB with one setting for every file. The
// figures are the research run's (docs/detection.md); a change to the
// detector that moves them must say so here.
func TestRangesNAB(t *testing.T) {
	n := loadNABOrSkip(t)
	r := runNAB(n, func() alerter { return &RangeState{} })
	want := [3]float64{66.76, 58.47, 71.52}
	for k := range want {
		if math.Abs(r.All[k]-want[k]) > 0.005 {
			t.Errorf("%s: %.2f, want %.2f", n.Profiles[k].Name, r.All[k], want[k])
		}
	}
	t.Logf("standard %.2f, reward_low_FP_rate %.2f, reward_low_FN_rate %.2f; even files %.2f, odd %.2f; %d alerts, %d outside windows, %d of %d windows",
		r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows)
}

func TestRangesState(t *testing.T) {
	if s := unsafe.Sizeof(RangeState{}); s > 1024 {
		t.Errorf("RangeState takes %d bytes, want at most 1 KB a stream", s)
	}
	var d RangeState
	rng := rand.New(rand.NewPCG(3, 4))
	if a := testing.AllocsPerRun(1000, func() { d.Observe(rng.NormFloat64(), 0) }); a != 0 {
		t.Errorf("%g allocations a sample", a)
	}
}

func TestFastLog1p(t *testing.T) {
	worst := 0.0
	for y := 0.0; y < 1e6; y = y*1.01 + 1e-4 {
		worst = max(worst, math.Abs(fastLog1p(y)-math.Log1p(y)))
	}
	if worst > 2e-4 {
		t.Errorf("fastLog1p off by %g", worst)
	}
}

// BenchmarkRanges runs beside BenchmarkObserve's zscore case: compare the
// two as a ratio in one run.
func BenchmarkRanges(b *testing.B) {
	var d RangeState
	xs := make([]float64, 4096)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range xs {
		xs[i] = 20 + rng.NormFloat64()
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Observe(xs[i&4095], int64(i)*300000)
	}
}

// TestRangeStateRoundTrip encodes a RangeState mid-stream, restores it,
// and checks both make the same decisions from then on, and that the
// decoder refuses what no RangeState can hold.
func TestRangeStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	next := func(i int) (float64, int64) {
		x := 20 + rng.NormFloat64() + 5*math.Sin(float64(i)/288*2*math.Pi)
		if i%997 == 0 {
			x += 40
		}
		return x, int64(i) * 300000
	}
	var a RangeState
	for i := range 5000 {
		a.Observe(next(i))
	}
	enc := a.AppendBinary(nil)
	if len(enc) != RangeStateSize {
		t.Fatalf("encoding is %d bytes, RangeStateSize %d", len(enc), RangeStateSize)
	}
	var b RangeState
	if err := b.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if b != a {
		t.Fatalf("restored state differs")
	}
	alerts := 0
	for i := 5000; i < 20000; i++ {
		x, ts := next(i)
		if ga, gb := a.Observe(x, ts), b.Observe(x, ts); ga != gb {
			t.Fatalf("sample %d: original alerts %v, restored %v", i, ga, gb)
		} else if ga {
			alerts++
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts compared")
	}
	for name, mut := range map[string]func([]byte) []byte{
		"short": func(b []byte) []byte { return b[:len(b)-1] },
		"long":  func(b []byte) []byte { return append(b, 0) },
		"NaN": func(b []byte) []byte {
			return binary.LittleEndian.AppendUint64(b[:len(b)-8], math.Float64bits(math.NaN()))
		},
		"Inf": func(b []byte) []byte {
			return binary.LittleEndian.AppendUint64(b[:len(b)-8], math.Float64bits(math.Inf(-1)))
		},
		"quiet":    func(b []byte) []byte { binary.LittleEndian.PutUint64(b[8:], rCool+1); return b },
		"negative": func(b []byte) []byte { binary.LittleEndian.PutUint64(b[0:], 1<<63); return b },
		"flag":     func(b []byte) []byte { b[40] = 2; return b },
	} {
		var c RangeState
		if err := c.UnmarshalBinary(mut(append([]byte(nil), enc...))); !errors.Is(err, ErrBadRangeState) {
			t.Errorf("%s: %v, want ErrBadRangeState", name, err)
		}
	}
}

// Encoding runs on the shard goroutine for every changed device every
// snapshot interval: it must not allocate beyond dst.
func TestRangeStateEncodeAllocs(t *testing.T) {
	var d RangeState
	for i := range 300 {
		d.Observe(float64(i%7), int64(i)*60000)
	}
	dst := make([]byte, 0, RangeStateSize)
	if a := testing.AllocsPerRun(100, func() { dst = d.AppendBinary(dst[:0]) }); a != 0 {
		t.Errorf("AppendBinary makes %g allocations", a)
	}
}
