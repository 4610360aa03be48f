package detect

// A scorer for the Numenta Anomaly Benchmark (NAB, github.com/numenta/NAB),
// following its nab/sweeper.py: detections are rows, each file's first
// min(floor(0.15·rows), 750) rows are probationary, the first detection in
// a labelled window earns a scaled sigmoid of how early it came, every
// detection outside the windows costs a sigmoid of its distance from the
// last window, and a window with no detection costs the miss weight.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Profile is one of NAB's cost matrices (config/profiles.json).
type Profile struct {
	Name       string
	TP, FP, FN float64
}

// NABFile is one labelled series.
type NABFile struct {
	Name    string    // "<category>/<file>.csv", as in the labels
	TS      []int64   // unix ms; NAB's naive timestamps read as UTC
	Values  []float64 // one per row
	Windows [][2]int  // anomaly windows as inclusive row ranges, in order
}

// Category is the directory the file is in, e.g. "realKnownCause".
func (f *NABFile) Category() string { return f.Name[:strings.IndexByte(f.Name, '/')] }

// Probation is how many leading rows NAB ignores.
func (f *NABFile) Probation() int {
	return int(math.Min(math.Floor(0.15*float64(len(f.TS))), 0.15*5000))
}

// NAB is a loaded benchmark.
type NAB struct {
	Files    []NABFile // sorted by name
	Profiles []Profile // standard, reward_low_FP_rate, reward_low_FN_rate
}

// ErrNoNAB is wrapped by LoadNAB when dir holds no NAB data.
var ErrNoNAB = fmt.Errorf("no NAB data")

const (
	nabTime      = "2006-01-02 15:04:05"
	nabLabelTime = "2006-01-02 15:04:05.000000"
)

// LoadNAB reads data/, labels/combined_windows.json and
// config/profiles.json under dir (a copy or checkout of NAB).
func LoadNAB(dir string) (*NAB, error) {
	labels, err := os.ReadFile(filepath.Join(dir, "labels", "combined_windows.json"))
	if err != nil {
		return nil, fmt.Errorf("%w in %s: %v", ErrNoNAB, dir, err)
	}
	var windows map[string][][2]string
	if err := json.Unmarshal(labels, &windows); err != nil {
		return nil, fmt.Errorf("labels/combined_windows.json: %w", err)
	}
	n := &NAB{}
	if n.Profiles, err = loadProfiles(filepath.Join(dir, "config", "profiles.json")); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(windows))
	for name := range windows {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		f, err := loadNABFile(filepath.Join(dir, "data", filepath.FromSlash(name)), name, windows[name])
		if err != nil {
			return nil, err
		}
		n.Files = append(n.Files, f)
	}
	return n, nil
}

func loadProfiles(path string) ([]Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("NAB profiles: %w", err)
	}
	var m map[string]struct {
		CostMatrix struct{ TPWeight, FPWeight, FNWeight float64 }
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var ps []Profile
	for _, name := range []string{"standard", "reward_low_FP_rate", "reward_low_FN_rate"} {
		c, ok := m[name]
		if !ok {
			return nil, fmt.Errorf("%s: no profile %q", path, name)
		}
		ps = append(ps, Profile{name, c.CostMatrix.TPWeight, c.CostMatrix.FPWeight, c.CostMatrix.FNWeight})
	}
	return ps, nil
}

func loadNABFile(path, name string, windows [][2]string) (NABFile, error) {
	f := NABFile{Name: name}
	fh, err := os.Open(path)
	if err != nil {
		return f, fmt.Errorf("NAB data: %w", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for line := 0; sc.Scan(); line++ {
		if line == 0 {
			continue // header
		}
		tsText, valText, ok := strings.Cut(sc.Text(), ",")
		ts, err1 := time.Parse(nabTime, tsText)
		v, err2 := strconv.ParseFloat(valText, 64)
		if !ok || err1 != nil || err2 != nil {
			return f, fmt.Errorf("%s line %d: want timestamp,value, got %q", name, line+1, sc.Text())
		}
		f.TS = append(f.TS, ts.UnixMilli())
		f.Values = append(f.Values, v)
	}
	if err := sc.Err(); err != nil {
		return f, fmt.Errorf("%s: %w", name, err)
	}
	// As the sweeper does: a window starts at the first row stamped with
	// its start and ends at the first row stamped with its end.
	for _, w := range windows {
		var rows [2]int
		for k, text := range w {
			t, err := time.Parse(nabLabelTime, text)
			if err != nil {
				return f, fmt.Errorf("%s: window %v: %w", name, w, err)
			}
			rows[k] = slices.Index(f.TS, t.UnixMilli())
			if rows[k] < 0 {
				return f, fmt.Errorf("%s: window %v: no row stamped %s", name, w, text)
			}
		}
		f.Windows = append(f.Windows, rows)
	}
	return f, nil
}

// scaledSigmoid is NAB's: about 0.987 at -1 (a window's first row), 0 at
// 0 (its end), -1 from 3 on (far past it).
func scaledSigmoid(pos float64) float64 {
	if pos >= 3 {
		return -1
	}
	return 2/(1+math.Exp(5*pos)) - 1
}

// FileScore is one file's score under one profile.
type FileScore struct {
	Raw      float64 // the sum of window credits, misses and false-positive costs
	Null     float64 // Raw of a detector that never fires
	Perfect  float64 // TP weight × windows
	Windows  int     // labelled windows
	Detected int     // windows with a detection
	FP       int     // detections outside every window, after probation
	Alerts   int     // detections after probation
}

// Add sums o into s.
func (s *FileScore) Add(o FileScore) {
	s.Raw += o.Raw
	s.Null += o.Null
	s.Perfect += o.Perfect
	s.Windows += o.Windows
	s.Detected += o.Detected
	s.FP += o.FP
	s.Alerts += o.Alerts
}

// Normalized is NAB's reported score: 0 never fires, 100 is perfect.
func (s *FileScore) Normalized() float64 {
	if s.Perfect == s.Null {
		return 0
	}
	return 100 * (s.Raw - s.Null) / (s.Perfect - s.Null)
}

// Score scores detections (row indexes, any order) on f under p.
func (f *NABFile) Score(detections []int, p Profile) FileScore {
	det := make([]bool, len(f.TS))
	for _, i := range detections {
		det[i] = true
	}
	prob := f.Probation()
	s := FileScore{Windows: len(f.Windows), Perfect: p.TP * float64(len(f.Windows))}
	maxTP := scaledSigmoid(-1)
	prevEnd, prevWidth := -1, 0
	w := 0 // next or current window
	for _, win := range f.Windows {
		if win[1] >= prob { // a window wholly in probation is not scored
			s.Null -= p.FN
		}
	}
	s.Raw = s.Null
	credit := make([]float64, len(f.Windows)) // best detection per window, 0 = none yet
	found := make([]bool, len(f.Windows))
	for i := range f.TS {
		in := w < len(f.Windows) && i >= f.Windows[w][0]
		var score float64
		if in {
			start, end := f.Windows[w][0], f.Windows[w][1]
			width := float64(end - start + 1)
			score = p.TP * scaledSigmoid(-float64(end-i+1)/width) / maxTP
		} else if prevEnd < 0 {
			score = p.FP * scaledSigmoid(3)
		} else {
			score = p.FP * scaledSigmoid(math.Abs(float64(prevEnd-i))/float64(prevWidth-1))
		}
		if det[i] && i >= prob {
			s.Alerts++
			switch {
			case !in:
				s.FP++
				s.Raw += score
			case !found[w]:
				found[w], credit[w] = true, score
			default:
				credit[w] = max(credit[w], score)
			}
		}
		if in && i == f.Windows[w][1] {
			prevEnd, prevWidth = i, f.Windows[w][1]-f.Windows[w][0]+1
			w++
		}
	}
	for k := range f.Windows {
		if found[k] {
			s.Detected++
			s.Raw += credit[k] + p.FN // replaces the miss counted above
		}
	}
	return s
}

// Report is a detector's NAB scores: per profile (in NAB.Profiles order)
// over all files, over the even and the odd files in sorted order (one
// half to choose settings on, the other to check them), and per category.
type Report struct {
	All, Even, Odd [3]float64
	Categories     map[string][3]float64
	// Under the standard profile: detections after probation, those
	// outside every window, windows detected and windows in all.
	Alerts, FP, Detected, Windows int
}

// Evaluate scores dets[i], the rows a detector alerted on in n.Files[i].
func (n *NAB) Evaluate(dets [][]int) Report {
	r := Report{Categories: map[string][3]float64{}}
	for k, p := range n.Profiles {
		var all, half [2]FileScore
		cats := map[string]*FileScore{}
		for i := range n.Files {
			f := &n.Files[i]
			s := f.Score(dets[i], p)
			all[0].Add(s)
			half[i%2].Add(s)
			c := cats[f.Category()]
			if c == nil {
				c = &FileScore{}
				cats[f.Category()] = c
			}
			c.Add(s)
		}
		r.All[k], r.Even[k], r.Odd[k] = all[0].Normalized(), half[0].Normalized(), half[1].Normalized()
		for name, c := range cats {
			v := r.Categories[name]
			v[k] = c.Normalized()
			r.Categories[name] = v
		}
		if k == 0 {
			r.Alerts, r.FP, r.Detected, r.Windows = all[0].Alerts, all[0].FP, all[0].Detected, all[0].Windows
		}
	}
	return r
}
