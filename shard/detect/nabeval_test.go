package detect

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// streamAlerter runs a Stream with fixed Params as an alerter.
type streamAlerter struct {
	st Stream
	p  Params
}

func (a *streamAlerter) Observe(x float64, ts int64) bool { return a.st.Observe(x, ts, &a.p).Alert }

func newStreamAlerter(p Params) func() alerter {
	return func() alerter { return &streamAlerter{st: NewStream(p.Window), p: p} }
}

// defaultParams are the service's default detector settings.
func defaultParams() Params {
	return Params{Kind: DefaultKind, Window: 50, MinSamples: 10, MinStddev: 1e-9,
		Threshold: DefaultThreshold, Cooldown: DefaultCooldown, StepFloor: DefaultStepFloor}
}

// TestEvalNAB is `make eval-nab`: every detector on every NAB file, one
// setting each, beside NAB's published scores, with the even and odd
// halves and per category. Run with -v to see the table.
func TestEvalNAB(t *testing.T) {
	n := loadNABOrSkip(t)
	base := Params{Window: 50, MinSamples: 10, MinStddev: 1e-9}
	with := func(k Kind, thr float64, cool int, step float64) Params {
		p := base
		p.Kind, p.Threshold, p.Cooldown, p.StepFloor = k, thr, cool, step
		return p
	}
	dets := []struct {
		name string
		mk   func() alerter
	}{
		{"zscore T=3, no cooldown (core)", newStreamAlerter(with(ZScore, 3, 0, 0))},
		{"winsor T=4, cooldown 50", newStreamAlerter(with(Winsor, 4, DefaultCooldown, DefaultStepFloor))},
		{"ewma T=4, cooldown 50", newStreamAlerter(with(EWMA, 4, DefaultCooldown, DefaultStepFloor))},
		{"ranges T=5, cooldown 50 (service default)", newStreamAlerter(with(Ranges, DefaultThreshold, DefaultCooldown, DefaultStepFloor))},
		{"ranges without its z-score channel", func() alerter { return &RangeState{} }},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| detector | standard | reward_low_FP_rate | reward_low_FN_rate | even files | odd files | alerts | outside windows | windows detected |\n|---|---|---|---|---|---|---|---|---|\n")
	cats := map[string][]string{}
	var names []string
	for _, d := range dets {
		r := runNAB(n, d.mk)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %d | %d | %d/%d |\n",
			d.name, r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows)
		for c, v := range r.Categories {
			cats[c] = append(cats[c], fmt.Sprintf("%.1f", v[0]))
		}
		names = append(names, d.name)
	}
	if pub, err := os.ReadFile(filepath.Join(nabDir(), "results", "final_results.json")); err == nil {
		var m map[string]map[string]float64
		if err := json.Unmarshal(pub, &m); err != nil {
			t.Fatal(err)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(x, y string) int { return int(m[y]["standard"]*100 - m[x]["standard"]*100) })
		for _, k := range keys {
			fmt.Fprintf(&b, "| published: %s | %.2f | %.2f | %.2f | | | | | |\n", k, m[k]["standard"], m[k]["reward_low_FP_rate"], m[k]["reward_low_FN_rate"])
		}
	}
	fmt.Fprintf(&b, "\nstandard score per category:\n\n| category | %s |\n|---|%s\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	catNames := make([]string, 0, len(cats))
	for c := range cats {
		catNames = append(catNames, c)
	}
	slices.Sort(catNames)
	for _, c := range catNames {
		fmt.Fprintf(&b, "| %s | %s |\n", c, strings.Join(cats[c], " | "))
	}
	t.Log(b.String())
}
