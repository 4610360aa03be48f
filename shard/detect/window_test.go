package detect

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// exactStats computes the mean and population stddev of xs with 256-bit
// floats: the reference the running sums must match.
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

// checkStream pushes xs through a window of size w and compares its stats
// with the exact ones after every push: mean within 1e-12 of max(|mean|,
// stddev), stddev within 1e-9 relative (1e-9 absolute near zero). Below
// 1e-300 the mean's bound is absolute: subnormal floats carry no relative
// precision (one ulp there is 5e-324), and the fuzzer found a window of
// {5e-324, 0} whose mean rounded the other way.
func checkStream(t *testing.T, name string, w int, xs []float64) {
	t.Helper()
	win := NewWindow(w)
	for i, x := range xs {
		win.Push(x)
		lo := max(0, i+1-w)
		wantMean, wantSD := exactStats(xs[lo : i+1])
		gotMean, gotSD := win.Stats()
		scale := math.Max(math.Abs(wantMean), wantSD)
		if math.Abs(gotMean-wantMean) > max(1e-12*scale, 1e-300) {
			t.Fatalf("%s: push %d: unexpected mean; got %.17g; want %.17g", name, i, gotMean, wantMean)
		}
		if math.Abs(gotSD-wantSD) > 1e-9*math.Max(wantSD, 1) && math.Abs(gotSD-wantSD) > 1e-9*wantSD {
			t.Fatalf("%s: push %d: unexpected stddev; got %.17g; want %.17g", name, i, gotSD, wantSD)
		}
		if wantSD == 0 && gotSD > 1e-9 {
			t.Fatalf("%s: push %d: constant window has stddev %g", name, i, gotSD)
		}
	}
}

func TestWindowExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gen := func(n int, f func(i int) float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = f(i)
		}
		return xs
	}
	cases := []struct {
		name string
		xs   []float64
	}{
		{"random normal", gen(600, func(int) float64 { return rng.NormFloat64()*10 + 3 })},
		{"random uniform wide", gen(600, func(int) float64 { return (rng.Float64() - 0.3) * 1e6 })},
		{"constant", gen(300, func(int) float64 { return 42.125 })},
		{"subnormal", gen(300, func(i int) float64 { return []float64{5e-324, 0, 1e-310, -2e-320}[i*i%4] })},
		{"constant far", gen(300, func(int) float64 { return 1e9 + 0.1 })},
		{"alternating 1e12 1e-3", gen(400, func(i int) float64 { return []float64{1e12, 1e-3}[i%2] })},
		{"level shift to 1e9", gen(400, func(i int) float64 {
			if i < 120 {
				return rng.NormFloat64()
			}
			return 1e9 + rng.NormFloat64()*1e-3
		})},
		{"outlier leaves constant", gen(300, func(i int) float64 {
			if i == 10 {
				return 1e15
			}
			return 7
		})},
		{"drift", gen(600, func(i int) float64 { return float64(i)*1e3 + rng.NormFloat64()*1e-2 })},
	}
	for _, sigma := range []float64{1e-3, 1e-1, 1, 1e1, 1e3} {
		cases = append(cases, struct {
			name string
			xs   []float64
		}{"offset 1e9 sigma " + big.NewFloat(sigma).Text('g', 3), gen(500, func(int) float64 { return 1e9 + rng.NormFloat64()*sigma })})
	}
	for _, c := range cases {
		for _, w := range []int{2, 10, 50} {
			checkStream(t, c.name, w, c.xs)
		}
	}
}

func TestWindowValuesOrder(t *testing.T) {
	w := NewWindow(3)
	f := func(want ...float64) {
		t.Helper()
		got := w.Values(nil)
		if len(got) != len(want) {
			t.Fatalf("unexpected values; got %v; want %v", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("unexpected values; got %v; want %v", got, want)
			}
		}
	}
	f()
	w.Push(1)
	w.Push(2)
	f(1, 2)
	w.Push(3)
	w.Push(4)
	f(2, 3, 4)
	if lo, hi := w.MinMax(); lo != 2 || hi != 4 {
		t.Fatalf("unexpected min/max; got %v,%v; want 2,4", lo, hi)
	}
}

func FuzzWindow(f *testing.F) {
	f.Add(1.0, 2.0, 3.0, uint8(5))
	f.Add(1e12, 1e-3, 1e12, uint8(3))
	f.Add(1e9, 1e9+1e-3, 1e9-1e-3, uint8(50))
	f.Add(5e-324, 0.0, 0.0, uint8(0))
	f.Fuzz(func(t *testing.T, a, b, c float64, w uint8) {
		for _, x := range []float64{a, b, c} {
			if math.IsNaN(x) || math.Abs(x) > 1e150 {
				return
			}
		}
		size := int(w%60) + 2
		xs := make([]float64, 0, 200)
		for i := range 200 {
			xs = append(xs, []float64{a, b, c}[(i*i+i/3)%3])
		}
		checkStream(t, "fuzz", size, xs)
	})
}
