package detect

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestObserveMatchesReference checks z, verdicts and counts against a naive
// two-step reference: score x against the exact stats of the previous W
// values, then append it.
func TestObserveMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	const w = 50
	p := Params{Kind: ZScore, Window: w, MinSamples: 10, Threshold: 3, MinStddev: 1e-9}
	var xs []float64
	for i := range 3000 {
		x := 100 + rng.NormFloat64()*5
		if i%97 == 50 {
			x += 60 // a spike
		}
		if i > 2000 {
			x = 1e9 + rng.NormFloat64()*1e-3 // far from zero, tiny noise
		}
		xs = append(xs, x)
	}
	st := NewStream(w)
	var anomalies uint64
	for i, x := range xs {
		prev := xs[max(0, i-w):i]
		var wantZ float64
		if len(prev) > 0 {
			m, sd := exactStats(prev)
			wantZ = (x - m) / math.Max(sd, p.MinStddev)
		}
		wantAnomaly := len(prev) >= p.MinSamples && math.Abs(wantZ) >= p.Threshold
		sc := st.Observe(x, int64(i), &p)
		if math.Abs(sc.Z-wantZ) > 1e-6*math.Max(1, math.Abs(wantZ)) {
			t.Fatalf("sample %d: unexpected z; got %v; want %v", i, sc.Z, wantZ)
		}
		if sc.Alert != wantAnomaly && math.Abs(math.Abs(wantZ)-p.Threshold) > 1e-6 {
			t.Fatalf("sample %d: unexpected verdict; got %v; want %v (z=%v)", i, sc.Alert, wantAnomaly, wantZ)
		}
		if wantAnomaly {
			anomalies++
		}
	}
	if st.Count != uint64(len(xs)) || st.Anomalies != anomalies {
		t.Fatalf("unexpected totals; got count=%d anomalies=%d; want %d and %d", st.Count, st.Anomalies, len(xs), anomalies)
	}
	if anomalies < 15 {
		t.Fatalf("expected the injected spikes to be flagged; got %d anomalies", anomalies)
	}
}

func TestObserveRules(t *testing.T) {
	p := Params{Kind: ZScore, Window: 5, MinSamples: 3, Threshold: 3, MinStddev: 1e-9}
	f := func(name string, prior []float64, x float64, wantZ float64, wantAnomaly bool) {
		t.Helper()
		st := NewStream(5)
		for _, v := range prior {
			st.Observe(v, 0, &p)
		}
		sc := st.Observe(x, 1, &p)
		if math.Abs(sc.Z-wantZ) > 1e-9*math.Max(1, math.Abs(wantZ)) || sc.Alert != wantAnomaly {
			t.Fatalf("%s: got z=%v anomaly=%v; want z=%v anomaly=%v", name, sc.Z, sc.Alert, wantZ, wantAnomaly)
		}
	}
	f("first value scores zero", nil, 5, 0, false)
	f("too few samples", []float64{1, 1}, 100, 99e9, false)
	f("constant window uses MinStddev", []float64{0, 0, 0}, 3e-9, 3, true)
	f("below threshold", []float64{0, 2, 0, 2}, 3.9, 2.9, false)
	f("at threshold", []float64{0, 2, 0, 2}, 4, 3, true)
	f("negative side", []float64{0, 2, 0, 2}, -2, -3, true)
	f("oldest evicted", []float64{1000, 0, 2, 0, 2, 0, 2}, 5, 3.8/math.Sqrt(0.96), true)
}

func BenchmarkObserve(b *testing.B) {
	for _, w := range []int{10, 50, 500} {
		b.Run("W"+strconv.Itoa(w), func(b *testing.B) { benchmarkObserve(b, w) })
	}
}

func benchmarkObserve(b *testing.B, w int) {
	b.ReportAllocs()
	p := Params{Kind: DefaultKind, Window: w, MinSamples: 10, Threshold: 3, MinStddev: 1e-9, Cooldown: DefaultCooldown}
	st := NewStream(w)
	rng := rand.New(rand.NewPCG(1, 1))
	xs := make([]float64, 4096)
	for i := range xs {
		xs[i] = 20 + rng.NormFloat64()
	}
	b.ResetTimer()
	var n int
	for i := range b.N {
		if st.Observe(xs[i&4095], int64(i), &p).Alert {
			n++
		}
	}
	_ = n
}

// TestScoreScaleExplainsZ: an alert's Stddev is the scale its z was scored
// with, floors included, so z = (value - mean) / stddev holds for every
// detector; a flat window reported stddev 0 beside a finite z.
func TestScoreScaleExplainsZ(t *testing.T) {
	for _, k := range []Kind{ZScore, Winsor, EWMA} {
		p := Params{Kind: k, Window: 20, MinSamples: 5, Threshold: 4, MinStddev: 1e-9, StepFloor: 0.5}
		st := NewStream(p.Window)
		alerts := 0
		for i := range 400 {
			x := float64(i / 40) // a stuck signal with steps: flat windows
			if i%50 == 49 {
				x += 30
			}
			sc := st.Observe(x, int64(i), &p)
			if !sc.Anomalous {
				continue
			}
			alerts++
			if sc.Stddev < p.MinStddev {
				t.Fatalf("%v sample %d: stddev %v below MinStddev", k, i, sc.Stddev)
			}
			if want := (x - sc.Mean) / sc.Stddev; math.Abs(sc.Z-want) > 1e-9*math.Abs(want) {
				t.Fatalf("%v sample %d: z %v but (x-mean)/stddev = (%v-%v)/%v = %v", k, i, sc.Z, x, sc.Mean, sc.Stddev, want)
			}
		}
		if alerts < 5 {
			t.Fatalf("%v: %d anomalous samples; want the steps and spikes", k, alerts)
		}
	}
}
