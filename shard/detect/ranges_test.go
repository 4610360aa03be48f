package detect

import (
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
	r := runNAB(n, func() alerter { return &Ranges{} })
	want := [3]float64{70.02, 62.58, 74.56}
	for k := range want {
		if math.Abs(r.All[k]-want[k]) > 0.005 {
			t.Errorf("%s: %.2f, want %.2f", n.Profiles[k].Name, r.All[k], want[k])
		}
	}
	t.Logf("standard %.2f, reward_low_FP_rate %.2f, reward_low_FN_rate %.2f; even files %.2f, odd %.2f; %d alerts, %d outside windows, %d of %d windows",
		r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows)
}

func TestRangesState(t *testing.T) {
	if s := unsafe.Sizeof(Ranges{}); s > 1024 {
		t.Errorf("Ranges takes %d bytes, want at most 1 KB a stream", s)
	}
	var d Ranges
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
	var d Ranges
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
