package detect

// The evaluation the project owns: a labelled corpus of synthetic device
// signals (shard/detect/testdata/corpus, regenerated with -update) and a
// window-based scorer in the style of the Numenta Anomaly Benchmark. Run it
// with `make eval` or `go test ./shard/detect -run Eval -v`.

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

var (
	update = flag.Bool("update", false, "rewrite shard/detect/testdata/corpus from the generator")
	sweep  = flag.Bool("sweep", false, "TestEval: score a grid of detector settings")
)

// series is one labelled signal: label[i] is true inside anomaly windows.
type series struct {
	name   string // "<type>-<n>"
	values []float64
	labels []bool
}

func (s *series) kind() string { return s.name[:strings.LastIndexByte(s.name, '-')] }

// span is a labelled anomaly window [start, end).
type span2 struct{ start, end int }

func windowsOf(labels []bool) []span2 {
	var ws []span2
	for i := 0; i < len(labels); i++ {
		if !labels[i] {
			continue
		}
		j := i
		for j < len(labels) && labels[j] {
			j++
		}
		ws = append(ws, span2{i, j})
		i = j
	}
	return ws
}

// Scoring weights of NAB's standard profile: a missed window costs 1, an
// alert outside every window 0.11, and the first alert inside a window
// earns up to ~0.99, less the later it comes (a scaled sigmoid that falls
// to 0 at the window's end). Later alerts in the same window neither earn
// nor cost.
const (
	costFN = 1.0
	costFP = 0.11
)

func credit(i int, w span2) float64 {
	y := float64(i-(w.end-1)) / float64(w.end-w.start) // -1 at the start, 0 at the end
	return 2/(1+math.Exp(5*y)) - 1
}

// result is the score of one detector on one or more series.
type result struct {
	windows, detected int
	alerts, inWindow  int
	raw, null, best   float64
	delay             int // samples from window start to first alert, summed over detected windows
}

func (r *result) add(o result) {
	r.windows += o.windows
	r.detected += o.detected
	r.alerts += o.alerts
	r.inWindow += o.inWindow
	r.raw += o.raw
	r.null += o.null
	r.best += o.best
	r.delay += o.delay
}

// score is 0 for a detector that never alerts and 100 for one that alerts
// once at the start of every window and nowhere else.
func (r *result) score() float64 {
	if r.best == r.null {
		return 0
	}
	return 100 * (r.raw - r.null) / (r.best - r.null)
}

func (r *result) precision() float64 {
	if r.alerts == 0 {
		return 0
	}
	return float64(r.inWindow) / float64(r.alerts)
}

func (r *result) recall() float64 {
	if r.windows == 0 {
		return 0
	}
	return float64(r.detected) / float64(r.windows)
}

func (r *result) meanDelay() float64 {
	if r.detected == 0 {
		return math.NaN()
	}
	return float64(r.delay) / float64(r.detected)
}

// scoreAlerts scores alert positions (ascending) against labelled windows.
func scoreAlerts(alerts []int, labels []bool) result {
	ws := windowsOf(labels)
	r := result{windows: len(ws), alerts: len(alerts), null: -costFN * float64(len(ws))}
	for _, w := range ws {
		r.best += credit(w.start, w)
	}
	k := 0
	for _, w := range ws {
		first := true
		for ; k < len(alerts) && alerts[k] < w.end; k++ {
			a := alerts[k]
			if a < w.start {
				r.raw -= costFP
				continue
			}
			r.inWindow++
			if first {
				first = false
				r.detected++
				r.raw += credit(a, w)
				r.delay += a - w.start
			}
		}
		if first {
			r.raw -= costFN
		}
	}
	r.raw -= costFP * float64(len(alerts)-k)
	return r
}

func TestScoreAlerts(t *testing.T) {
	labels := make([]bool, 100)
	for i := 10; i < 20; i++ {
		labels[i] = true
	}
	for i := 50; i < 60; i++ {
		labels[i] = true
	}
	f := func(alerts []int, wantScore float64, wantDetected, wantIn int) {
		t.Helper()
		r := scoreAlerts(alerts, labels)
		if math.Abs(r.score()-wantScore) > 1e-9 || r.detected != wantDetected || r.inWindow != wantIn || r.alerts != len(alerts) {
			t.Fatalf("alerts %v: got score %.4f detected %d in-window %d; want %.4f %d %d",
				alerts, r.score(), r.detected, r.inWindow, wantScore, wantDetected, wantIn)
		}
	}
	best := 2 * credit(10, span2{10, 20})
	f(nil, 0, 0, 0)
	f([]int{10, 50}, 100, 2, 2)
	f([]int{10, 11, 12, 50}, 100, 2, 4) // later alerts in a window are free
	f([]int{10}, 100*(credit(10, span2{10, 20})-1+2)/(best+2), 1, 1)
	f([]int{0, 10, 50, 99}, 100*(best-0.22+2)/(best+2), 2, 2) // two false positives
	f([]int{19, 59}, 100*(2*credit(19, span2{10, 20})+2)/(best+2), 2, 2)
	if c0, c9 := credit(10, span2{10, 20}), credit(19, span2{10, 20}); !(c0 > 0.97 && c9 == 0) {
		t.Fatalf("unexpected credits: start %v, end %v", c0, c9)
	}
	if r := scoreAlerts([]int{15}, labels); r.delay != 5 || r.meanDelay() != 5 {
		t.Fatalf("unexpected delay %d", r.delay)
	}
	if ws := windowsOf(labels); len(ws) != 2 || ws[1] != (span2{50, 60}) {
		t.Fatalf("unexpected windows %v", ws)
	}
}

// corpusLen is the length of every generated series.
const corpusLen = 4000

// generate builds the corpus: three variants of each signal type, each
// with its own seed. Windows start at the anomaly's onset: a streaming
// detector cannot see it earlier.
func generate() []series {
	type gen func(r *rand.Rand, v int) ([]float64, []bool)
	types := []struct {
		name string
		fn   gen
	}{
		{"spikes", genSpikes},
		{"level-shift", genLevelShift},
		{"drift", genDrift},
		{"variance", genVariance},
		{"seasonal", genSeasonal},
		{"stuck", genStuck},
		{"quantised", genQuantised},
		{"bursty", genBursty},
		{"heavy-tail", genHeavyTail},
	}
	var out []series
	for ti, ty := range types {
		for v := 1; v <= 3; v++ {
			r := rand.New(rand.NewPCG(uint64(ti+1), uint64(v)))
			vals, labels := ty.fn(r, v)
			out = append(out, series{name: fmt.Sprintf("%s-%d", ty.name, v), values: vals, labels: labels})
		}
	}
	return out
}

// onsets picks n anomaly positions at least gap apart, after a warm-up.
func onsets(r *rand.Rand, n, gap int) []int {
	var ts []int
	for len(ts) < n {
		t := 300 + r.IntN(corpusLen-600)
		ok := true
		for _, u := range ts {
			if t > u-gap && t < u+gap {
				ok = false
			}
		}
		if ok {
			ts = append(ts, t)
		}
	}
	sort.Ints(ts)
	return ts
}

func mark(labels []bool, start, n int) {
	for i := start; i < start+n && i < len(labels); i++ {
		labels[i] = true
	}
}

func noise(r *rand.Rand, base, sigma float64) []float64 {
	xs := make([]float64, corpusLen)
	for i := range xs {
		xs[i] = base + r.NormFloat64()*sigma
	}
	return xs
}

func genSpikes(r *rand.Rand, v int) ([]float64, []bool) {
	base := []float64{20, 1e6, -3}[v-1] // a temperature, a large counter, a signal around zero
	sigma := []float64{0.5, 250, 0.02}[v-1]
	xs, labels := noise(r, base, sigma), make([]bool, corpusLen)
	for _, t := range onsets(r, 8, 300) {
		xs[t] += sigma * (6 + 6*r.Float64()) * float64(1-2*r.IntN(2))
		mark(labels, t, 20)
	}
	return xs, labels
}

func genLevelShift(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := noise(r, 50, 1+float64(v)), make([]bool, corpusLen)
	level := 0.0
	ts := onsets(r, 3, 800)
	for i := range xs {
		for _, t := range ts {
			if i == t {
				level += (1 + float64(v)) * (5 + 3*r.Float64()) * float64(1-2*r.IntN(2))
				mark(labels, t, 100)
			}
		}
		xs[i] += level
	}
	return xs, labels
}

func genDrift(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := noise(r, 100, 2), make([]bool, corpusLen)
	t0 := onsets(r, 1, 0)[0]
	slope := 0.02 * float64(v)
	for i := t0; i < corpusLen; i++ {
		xs[i] += slope * float64(min(i-t0, 400))
	}
	mark(labels, t0, 400)
	return xs, labels
}

func genVariance(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := noise(r, 10, 1), make([]bool, corpusLen)
	for _, t := range onsets(r, 2, 1000) {
		for i := t; i < t+300; i++ {
			xs[i] = 10 + r.NormFloat64()*float64(3+v)
		}
		mark(labels, t, 150)
	}
	return xs, labels
}

func genSeasonal(r *rand.Rand, v int) ([]float64, []bool) {
	period := []float64{288, 96, 1440}[v-1] // 5-min samples a day, 15-min, 1-min
	xs, labels := make([]float64, corpusLen), make([]bool, corpusLen)
	for i := range xs {
		xs[i] = 50 + 10*math.Sin(2*math.Pi*float64(i)/period) + r.NormFloat64()
	}
	ts := onsets(r, 4, 500)
	for k, t := range ts {
		switch k % 2 {
		case 0: // a spike against the daily curve
			xs[t] += 8 * float64(1-2*r.IntN(2))
			mark(labels, t, 20)
		case 1: // the curve stops: stuck at the value it had
			for i := t + 1; i < t+100; i++ {
				xs[i] = xs[t]
			}
			mark(labels, t+1, 120)
		}
	}
	return xs, labels
}

func genStuck(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := noise(r, 30, 0.5*float64(v)), make([]bool, corpusLen)
	for _, t := range onsets(r, 2, 1200) {
		for i := t + 1; i < t+250; i++ {
			xs[i] = xs[t]
		}
		mark(labels, t+1, 280)
	}
	return xs, labels
}

func genQuantised(r *rand.Rand, v int) ([]float64, []bool) {
	step := []float64{1, 0.5, 0.1}[v-1] // integer readings, half steps, one decimal
	xs, labels := noise(r, 21, 0.6*step), make([]bool, corpusLen)
	for i := range xs {
		xs[i] = math.Round(xs[i]/step) * step
	}
	for _, t := range onsets(r, 6, 300) {
		xs[t] += step * 8 * float64(1-2*r.IntN(2))
		mark(labels, t, 20)
	}
	return xs, labels
}

func genBursty(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := make([]float64, corpusLen), make([]bool, corpusLen)
	rate := []float64{0.2, 2, 20}[v-1] // sparse events to busy request counts
	for i := range xs {
		xs[i] = poisson(r, rate)
	}
	for _, t := range onsets(r, 5, 400) {
		for i := t; i < t+5; i++ {
			xs[i] = poisson(r, rate*10+20)
		}
		mark(labels, t, 25)
	}
	return xs, labels
}

func genHeavyTail(r *rand.Rand, v int) ([]float64, []bool) {
	xs, labels := make([]float64, corpusLen), make([]bool, corpusLen)
	level := 0.0
	ts := onsets(r, 3, 800)
	for i := range xs {
		for _, t := range ts {
			if i == t {
				level += 15 * float64(1-2*r.IntN(2))
				mark(labels, t, 100)
			}
		}
		// Student's t with 3 degrees of freedom: occasional large noise.
		chi := 0.0
		for range 3 {
			g := r.NormFloat64()
			chi += g * g
		}
		xs[i] = 200 + level + float64(v)*r.NormFloat64()/math.Sqrt(chi/3)
	}
	return xs, labels
}

func poisson(r *rand.Rand, lambda float64) float64 {
	if lambda > 30 {
		return math.Max(0, math.Round(lambda+math.Sqrt(lambda)*r.NormFloat64()))
	}
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= r.Float64()
		if p <= l {
			return float64(k)
		}
		k++
	}
}

func encodeSeries(s series) []byte {
	var b bytes.Buffer
	b.WriteString("value,label\n")
	for i, x := range s.values {
		l := 0
		if s.labels[i] {
			l = 1
		}
		b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
		b.WriteByte(',')
		b.WriteString(strconv.Itoa(l))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

const corpusDir = "testdata/corpus"

// loadCorpus reads every series from testdata/corpus.
func loadCorpus(tb testing.TB) []series {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.csv"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no corpus in %s (go test ./shard/detect -run TestCorpus -update): %v", corpusDir, err)
	}
	var out []series
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		s := series{name: strings.TrimSuffix(filepath.Base(f), ".csv")}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Scan() // header
		for line := 2; sc.Scan(); line++ {
			v, l, ok := strings.Cut(sc.Text(), ",")
			x, err := strconv.ParseFloat(v, 64)
			if !ok || err != nil || (l != "0" && l != "1") {
				tb.Fatalf("%s:%d: want value,label; got %q", f, line, sc.Text())
			}
			s.values = append(s.values, x)
			s.labels = append(s.labels, l == "1")
		}
		out = append(out, s)
	}
	return out
}

// TestCorpus checks that the committed corpus is what the generator makes
// (rewrite it with -update).
func TestCorpus(t *testing.T) {
	gen := generate()
	if *update {
		if err := os.MkdirAll(corpusDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range gen {
			if err := os.WriteFile(filepath.Join(corpusDir, s.name+".csv"), encodeSeries(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range gen {
		data, err := os.ReadFile(filepath.Join(corpusDir, s.name+".csv"))
		if err != nil || !bytes.Equal(data, encodeSeries(s)) {
			t.Fatalf("%s differs from the generator (go test ./shard/detect -run TestCorpus -update): %v", s.name, err)
		}
		if len(windowsOf(s.labels)) == 0 {
			t.Fatalf("%s has no anomaly window", s.name)
		}
	}
}

// evalConfig is one detector configuration in the table.
type evalConfig struct {
	name string
	p    Params
}

func evalConfigs() []evalConfig {
	base := Params{Window: 50, MinSamples: 10, Threshold: 3, MinStddev: 1e-9}
	with := func(name string, f func(p *Params)) evalConfig {
		p := base
		f(&p)
		return evalConfig{name, p}
	}
	cfgs := []evalConfig{with("zscore, T=3, no cooldown (core)", func(p *Params) { p.Kind = ZScore })}
	if *sweep {
		for _, k := range []Kind{ZScore, Winsor, EWMA} {
			for _, th := range []float64{3, 4, 5} {
				for _, cd := range []int{10, 50} {
					for _, sf := range []float64{0, 0.5, 1} {
						cfgs = append(cfgs, with(fmt.Sprintf("%s T=%g cd=%d sf=%g", k, th, cd, sf), func(p *Params) {
							p.Kind, p.Threshold, p.Cooldown, p.StepFloor = k, th, cd, sf
						}))
					}
				}
			}
		}
	} else {
		for _, k := range []Kind{ZScore, Winsor, EWMA} {
			cfgs = append(cfgs,
				with(k.String()+", T=3, cooldown 50", func(p *Params) { p.Kind, p.Cooldown, p.StepFloor = k, 50, 0.5 }),
				with(k.String()+", T=4, cooldown 50", func(p *Params) { p.Kind, p.Cooldown, p.StepFloor, p.Threshold = k, 50, 0.5, 4 }),
			)
		}
	}
	return append(cfgs, with("default", func(p *Params) {
		p.Kind, p.Threshold, p.Cooldown, p.StepFloor = DefaultKind, DefaultThreshold, DefaultCooldown, DefaultStepFloor
	}))
}

// run feeds a series through one stream and returns the alert positions.
func run(p *Params, xs []float64) []int {
	st := NewStream(p.Window)
	var alerts []int
	for i, x := range xs {
		if st.Observe(x, int64(i), p).Alert {
			alerts = append(alerts, i)
		}
	}
	return alerts
}

// TestEval prints, per detector configuration, the score, precision,
// recall and time to detect over the corpus, then the score per signal
// type. It fails only if the default stops beating the plain z-score.
func TestEval(t *testing.T) {
	corpus := loadCorpus(t)
	cfgs := evalConfigs()
	var kinds []string
	byKind := make([]map[string]*result, len(cfgs))
	total := make([]result, len(cfgs))
	for c := range cfgs {
		byKind[c] = map[string]*result{}
		for _, s := range corpus {
			r := scoreAlerts(run(&cfgs[c].p, s.values), s.labels)
			total[c].add(r)
			k := s.kind()
			if byKind[c][k] == nil {
				byKind[c][k] = new(result)
				if c == 0 {
					kinds = append(kinds, k)
				}
			}
			byKind[c][k].add(r)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d series, %d labelled windows, %d samples\n\n", len(corpus), total[0].windows, len(corpus)*corpusLen)
	fmt.Fprintf(&b, "| detector | score | precision | recall | alerts | mean delay (samples) |\n|---|---|---|---|---|---|\n")
	for c, cfg := range cfgs {
		r := &total[c]
		fmt.Fprintf(&b, "| %s | %.1f | %.2f | %.2f | %d | %.1f |\n", cfg.name, r.score(), r.precision(), r.recall(), r.alerts, r.meanDelay())
	}
	fmt.Fprintf(&b, "\nscore per signal type:\n\n| detector |")
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s |", k)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(kinds)) + "\n")
	for c, cfg := range cfgs {
		fmt.Fprintf(&b, "| %s |", cfg.name)
		for _, k := range kinds {
			fmt.Fprintf(&b, " %.1f |", byKind[c][k].score())
		}
		b.WriteString("\n")
	}
	t.Log(b.String())
	if def, core := total[len(cfgs)-1].score(), total[0].score(); def <= core {
		t.Fatalf("default detector scores %.1f, no better than the plain z-score's %.1f", def, core)
	}
}
