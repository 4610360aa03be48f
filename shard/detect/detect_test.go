package detect

import (
	"math"
	"math/rand/v2"
	"slices"
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

// BenchmarkObserve is one stream's update with the default detector at
// three window sizes, and with each kind at W=50: read the kinds as ratios
// to zscore in one run.
func BenchmarkObserve(b *testing.B) {
	for _, w := range []int{10, 50, 500} {
		b.Run("W"+strconv.Itoa(w), func(b *testing.B) { benchmarkObserve(b, DefaultKind, w) })
	}
	for _, k := range []Kind{ZScore, Winsor, EWMA, Ranges} {
		b.Run(k.String()+"/W50", func(b *testing.B) { benchmarkObserve(b, k, 50) })
	}
}

func benchmarkObserve(b *testing.B, k Kind, w int) {
	b.ReportAllocs()
	p := Params{Kind: k, Window: w, MinSamples: 10, Threshold: DefaultThreshold, MinStddev: 1e-9, Cooldown: DefaultCooldown, StepFloor: DefaultStepFloor}
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

// TestCooldownTime: with a time cooldown, a stream alerting on every spike
// alerts at most once per CooldownMs of ts, except on an escalation, for
// every kind; a sample count cooldown of 0 does not lift it.
func TestCooldownTime(t *testing.T) {
	for _, k := range []Kind{Winsor, EWMA, Ranges} {
		p := Params{Kind: k, Window: 50, MinSamples: 10, Threshold: 4, MinStddev: 1e-9, StepFloor: 0.5, CooldownMs: 35 * 60000}
		st := NewStream(p.Window)
		rng := rand.New(rand.NewPCG(1, 2))
		var alerts []int64
		for i := range 3000 {
			ts := int64(i) * 60000 // a sample a minute
			x := 20 + rng.NormFloat64()
			switch {
			case i == 2950:
				x = 1e6 // an escalation: alerts inside the cooldown
			case i >= 200 && i%20 == 0:
				x = 26 // a spike every 20 minutes, about 6 sds: no escalation over another, nor over 2 × the threshold
			}
			if st.Observe(x, ts, &p).Alert {
				alerts = append(alerts, ts)
			}
		}
		esc := 0
		for j := 1; j < len(alerts); j++ {
			if gap := alerts[j] - alerts[j-1]; gap < p.CooldownMs {
				if alerts[j] != 2950*60000 {
					t.Fatalf("%s: alerts %d ms apart at %d, cooldown %d ms", k, gap, alerts[j], p.CooldownMs)
				}
				esc++
			}
		}
		// The escalation alerts (inside a cooldown or not), except in
		// Ranges, whose z channel is shut while z-score alerts are
		// frequent, escalations included.
		if len(alerts) < 10 || esc > 1 || k != Ranges && !slices.Contains(alerts, 2950*60000) {
			t.Fatalf("%s: %d alerts (%d inside the cooldown); want at least 10, one of them sample 2950's", k, len(alerts), esc)
		}
		if err := (&Params{Kind: k, Window: 2, MinSamples: 1, Threshold: 1, MinStddev: 1, CooldownMs: -1}).Validate(); err == nil {
			t.Fatalf("negative CooldownMs accepted")
		}
	}
}

// TestReason: the window detectors' alerts say "z"; Ranges names the
// channel, and its z channel speaks when the ranges do not.
func TestReason(t *testing.T) {
	for _, k := range []Kind{ZScore, Winsor, EWMA, Ranges} {
		p := Params{Kind: k, Window: 50, MinSamples: 10, Threshold: 4, MinStddev: 1e-9}
		st := NewStream(p.Window)
		var got []Reason
		for i := range 600 {
			x := []float64{10, 30}[i%2] // a range of 20, kept
			switch {
			case i == 599:
				x = 20.5 // inside every range, about 60 sds from the window
			case i >= 200:
				x = 20 + 0.01*float64(i%3)
			}
			if sc := st.Observe(x, int64(i), &p); sc.Alert != (sc.Reason != ReasonNone) {
				t.Fatalf("%s: alert %v with reason %v", k, sc.Alert, sc.Reason)
			} else if sc.Alert {
				got = append(got, sc.Reason)
			}
		}
		if len(got) == 0 || got[len(got)-1] != ReasonZ {
			t.Errorf("%s: reasons %v, want the last one z", k, got)
		}
	}
	for r := range numReasons + 1 {
		if p, ok := ParseReason(r.String()); r.Valid() != ok || ok && p != r {
			t.Errorf("reason %d: %q parses to %v, %v", r, r.String(), p, ok)
		}
	}
}
