package detect

import (
	"encoding/binary"
	"math"
	"math/rand"
	"testing"
)

// reviewNParams is the service's default detector (ranges, T=5, W=50,
// MIN_SAMPLES=10, STEP_FLOOR=0.5) with the given cooldowns.
func reviewNParams(kind Kind, samples int, ms int64) Params {
	return Params{Kind: kind, Window: 50, MinSamples: 10, Threshold: DefaultThreshold, MinStddev: 1e-9,
		Cooldown: samples, StepFloor: DefaultStepFloor, CooldownMs: ms}
}

// TestReviewNTimeCooldownOverflow: the time cooldown's end is computed as
// ts + CooldownMs with no overflow check. The API accepts any ts up to
// math.MaxInt64 (server/decode.go: "a non-negative integer of unix
// milliseconds"), so for an alert within CooldownMs of MaxInt64 coolUntil
// wraps to a negative number, `ts < s.coolUntil` is false, and the very
// next anomalous sample alerts although it is well inside the cooldown.
// Reproduction: winsor, ALERT_COOLDOWN=10m, two equal spikes 100 ms apart
// with ts near MaxInt64. Correct: the second spike (not escalated) is held
// back, as it is for ts near 1.7e12; coolUntil should saturate.
func TestReviewNTimeCooldownOverflow(t *testing.T) {
	for _, base := range []int64{1_732_560_000_000, math.MaxInt64 - 10_000} {
		p := reviewNParams(Winsor, 0, 600_000) // 10m, no sample cooldown
		s := NewStream(p.Window)
		rng := rand.New(rand.NewSource(1))
		var alerts []int
		for i := 0; i < 300; i++ {
			x := rng.NormFloat64()
			if i == 200 || i == 201 {
				x = 12 // two equal spikes: the second is not an escalation
			}
			if sc := s.Observe(x, base+int64(i), &p); sc.Alert {
				alerts = append(alerts, i)
			}
		}
		if len(alerts) != 1 || alerts[0] != 200 {
			t.Errorf("ts base %d: alerts at samples %v; want only sample 200 (201 is 1 ms later, inside the 10m cooldown)", base, alerts)
		}
	}
}

// TestReviewNEscalationSwallowedByRangeChannel: docs/detection.md says a
// time cooldown (ALERT_COOLDOWN=10m) holds back every channel for ranges
// "with the same escalation": a sample whose |z| reaches 2x the last
// alert's breaks through. In Stream.Observe the escalated z alert is
// handed to RangeState.Decide, which names a range channel first when one
// also fires (a big spike nearly always leaves the value range too), and
// then `held && why != ReasonZ` throws the alert away. So the larger the
// escalation, the surer it is to be suppressed. With a count cooldown the
// same sample alerts (reason value_range).
// Reproduction: ranges, N(0,1) noise a sample a minute, a spike of 8
// (alert), then 40 samples (40 min) later, past the ranges' 30-sample
// quiet, a spike of 40:
// |z| ~ 40 >= 2 x 8. Correct: the second spike alerts under ALERT_COOLDOWN=1h
// just as it does under ALERT_COOLDOWN=1000 (samples).
func TestReviewNEscalationSwallowedByRangeChannel(t *testing.T) {
	run := func(p Params) (alerts []int, zs []float64, why []Reason) {
		s := NewStream(p.Window)
		rng := rand.New(rand.NewSource(7))
		for i := 0; i < 2200; i++ {
			x := rng.NormFloat64()
			switch i {
			case 2000:
				x = 8
			case 2040:
				x = 40
			}
			sc := s.Observe(x, 1_732_560_000_000+int64(i)*60_000, &p) // a sample a minute
			if sc.Alert && i >= 2000 {
				alerts, zs, why = append(alerts, i), append(zs, sc.Z), append(why, sc.Reason)
			}
		}
		return
	}
	// Sanity: with a sample cooldown the escalation breaks through.
	if a, z, w := run(reviewNParams(Ranges, 1000, 0)); len(a) != 2 || a[1] != 2040 {
		t.Fatalf("ALERT_COOLDOWN=1000: alerts %v z %v reasons %v; want samples 2000 and 2040", a, z, w)
	}
	a, z, w := run(reviewNParams(Ranges, 0, 3_600_000))
	if len(a) != 2 || a[1] != 2040 {
		t.Errorf("ALERT_COOLDOWN=1h: alerts %v (z %v, reasons %v); want samples 2000 and 2040: the second spike's |z| is 5x the first's, an escalation that must break through the time cooldown", a, z, w)
	}
}

// TestReviewNRangeAlertPushesFakeValueIntoWindow: for ranges a sample is
// "anomalous" also when a range channel alerts, and Observe then admits
// `mean + copysign(Threshold*sdf, z)` into the window instead of x. That
// clipping is meant to shrink an outlier (winsor: |z| >= T), but a range
// alert (value_range on a slow climb, mean_range, volatility,
// daily_profile) usually has |z| < T, so the window receives a value
// FARTHER from the mean than x, by up to T standard deviations: a value
// the device never sent, which then shows in rolling_average/std_dev and
// inflates the stddev the next z-scores are judged against.
// Reproduction: ranges defaults, a quiet stream (then a slow climb out of
// its range); on each range alert with |z| < T check the newest window
// value. It already fails on a mean_range alert in the quiet part (z=-1.5
// enters as -5 stddevs). Correct: a sample with |z| < Threshold enters the window as x
// (clipping never moves a value away from the mean).
func TestReviewNRangeAlertPushesFakeValueIntoWindow(t *testing.T) {
	p := reviewNParams(Ranges, 50, 0)
	s := NewStream(p.Window)
	rng := rand.New(rand.NewSource(3))
	checked := 0
	for i := 0; i < 1000; i++ {
		x := 20 + 0.1*rng.Float64()
		if i >= 400 {
			x += float64(i-400) * 0.01 // a slow climb
		}
		sc := s.Observe(x, 1_732_560_000_000+int64(i)*1000, &p)
		if !sc.Alert || math.Abs(sc.Z) >= p.Threshold {
			continue
		}
		checked++
		vals := s.Win.Values(nil)
		got := vals[len(vals)-1]
		if got != x {
			t.Fatalf("sample %d: %s alert with z=%.3f (< threshold %g): x=%g entered the window as %g (%.2f stddevs from the mean instead of %.2f)",
				i, sc.Reason, sc.Z, p.Threshold, x, got, (got-sc.Mean)/sc.Stddev, sc.Z)
		}
	}
	if checked == 0 {
		t.Fatal("no range alert with |z| < threshold: the scenario did not exercise the defect")
	}
}

// TestReviewNRuleCooldownNull: a rule's "cooldown" became a
// json.RawMessage to take "10m", and a JSON null now reaches ParseCooldown
// as "" and fails the whole DETECTOR_CONFIG ("cooldown=\"\": want a count
// of samples ..."), so the service no longer starts with a config it
// accepted at d541cf3 (where Cooldown was *int and null meant "the
// default"), and unlike every other field of a rule ("threshold": null,
// "window": null ... still mean the default).
// Correct: "cooldown": null leaves the default cooldown, as before.
func TestReviewNRuleCooldownNull(t *testing.T) {
	def := reviewNParams(Ranges, 50, 0)
	if _, err := ParseRules([]byte(`{"rules":[{"match":"x","threshold":null}]}`), def); err != nil {
		t.Fatalf(`"threshold": null: %v`, err)
	}
	r, err := ParseRules([]byte(`{"rules":[{"match":"x","cooldown":null}]}`), def)
	if err != nil {
		t.Fatalf(`"cooldown": null: %v; want the default cooldown, as for "threshold": null and as before this change`, err)
	}
	if r[0].Params.Cooldown != 50 || r[0].Params.CooldownMs != 0 {
		t.Fatalf(`"cooldown": null gave %+v; want the default (50 samples)`, r[0].Params)
	}
}

// TestReviewNRangeStateAcceptsStateThatTurnsNonFinite: RangeState.UnmarshalBinary
// (snapshot version 4, reached from DecodeSnapshot on whatever Redis holds)
// checks only that each float is finite (and zrate's range), not that it
// is a value a stream fed valid samples (|x| <= 1e150, shard.MaxValue) can
// hold, which DecodeSnapshot checks for every other field ("rejects ...
// values that no stream fed valid samples can hold"). A value range of
// [-1.7e308, -1.6e308] and profile levels of 1.7e308 are accepted; one
// valid sample (0, clipped to the range's reach, -1.45e308) then makes the
// profile residual -Inf, the next NaN, and the stream's next snapshot no
// longer decodes: the device is taken for corrupt and loses its state and
// history on the following restore.
// Reproduction: encode a real state, overwrite those floats, decode
// (accepted), feed three zeros, re-encode, decode again.
// Correct: either the decoder refuses the state, or every state it
// accepts stays encodable after valid samples.
func TestReviewNRangeStateAcceptsStateThatTurnsNonFinite(t *testing.T) {
	var d RangeState
	for i := range 300 {
		d.Decide(float64(i%7), int64(i)*60_000, false)
	}
	b := d.AppendBinary(nil)
	put := func(i int, f float64) { binary.LittleEndian.PutUint64(b[3*8+1+8*i:], math.Float64bits(f)) }
	put(6, -1.7e308) // rx.lo
	put(7, -1.6e308) // rx.hi
	for k := range 24 {
		put(12+2*k, 1.7e308) // prof[k].p
	}
	var r RangeState
	if err := r.UnmarshalBinary(b); err != nil {
		return // refused: fine
	}
	for i := range 3 {
		r.Decide(0, int64(300+i)*60_000, false)
	}
	var again RangeState
	if err := again.UnmarshalBinary(r.AppendBinary(nil)); err != nil {
		t.Fatalf("a state UnmarshalBinary accepted, after 3 valid samples (0), no longer decodes: %v", err)
	}
}
