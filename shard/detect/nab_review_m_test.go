package detect

// Hostile review M of the NAB scorer (nab.go) against nab/sweeper.py, and
// of the service's default detector under an input the service accepts.

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestReviewMNABSigmoidAtThree: the review read NAB's scaledSigmoid as
// clamping only above 3. NAB's nab/sweeper.py (numenta/NAB at 03ef06a)
// reads "if relativePositionInWindow >= 3.0: return -1.0", so a false
// positive exactly 3·(w-1) rows after a window of width w is charged the
// full -A_fp. The test now holds the scorer to that text.
func TestReviewMNABSigmoidAtThree(t *testing.T) {
	f := NABFile{Name: "x/y.csv", TS: make([]int64, 1000), Windows: [][2]int{{200, 209}}} // w = 10
	for i := range f.TS {
		f.TS[i] = int64(i) * 60000
	}
	p := Profile{"standard", 1, 0.11, 1}
	det := 209 + 3*9 // |209 - i| / (10 - 1) == 3 exactly
	got := f.Score([]int{det}, p).Raw
	want := -p.FN - p.FP // the window missed, one FP at position 3.0, clamped as sweeper.py does
	if math.Abs(got-want) > 1e-12 {
		t.Errorf("a false positive at relative position exactly 3.0 scores raw %.12f, sweeper.py gives %.12f (it clamps from 3 on)", got, want)
	}
}

// TestReviewMWinsorSecondSampleGlitch: not Ranges, the service default the
// NAB table and TestNABLive measure. The long-run step scale behind
// StepFloor is clipped to stepClip × itself, but not while it is still 0,
// so a bad second sample (|v| up to 1e150 passes the ingest bound) sets it
// to ~1e150; it then fades by 1/1000 a sample, and StepFloor × step floors
// every stddev above any real deviation: the stream never alerts again,
// here not on a 1000-sd spike in 20,000 samples. A glitch at the third
// sample or later is clipped and harmless.
func TestReviewMWinsorSecondSampleGlitch(t *testing.T) {
	for _, at := range []int{1, 2} {
		p := Params{Kind: Winsor, Window: 50, MinSamples: 10, Threshold: DefaultThreshold, MinStddev: 1e-9,
			Cooldown: DefaultCooldown, StepFloor: DefaultStepFloor}
		st := NewStream(p.Window)
		rng := rand.New(rand.NewPCG(1, 2))
		alerts := 0
		for i := 0; i < 20000; i++ {
			x := rng.NormFloat64()
			if i == at {
				x = 1e150
			}
			if i%1000 == 999 {
				x = 1000 // 1000 sds
			}
			if st.Observe(x, int64(i)*60000, &p).Alert && i%1000 == 999 {
				alerts++
			}
		}
		if alerts < 19 {
			t.Errorf("1e150 as sample %d: %d of 20 spikes of 1000 sds alert over the next 20,000 samples (step scale still %.3g)", at, alerts, st.step)
		}
	}
}
