package detect

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

var nabExplore = flag.Bool("nabexp", false, "TestNABExplore: score candidate detectors on NAB")

// alerter is a detector as the evaluation sees it.
type alerter interface {
	Observe(x float64, ts int64) bool
}

// nabScores holds one detector's scores: [profile] for all files, the
// even and odd halves (in sorted order), and per category.
type nabScores struct {
	all, even, odd [3]float64
	cats           map[string][3]float64
	alerts, fp     int
	detected, wins int
}

// runNAB streams every file through a fresh detector from mk.
func runNAB(n *NAB, mk func() alerter) nabScores {
	dets := make([][]int, len(n.Files))
	for i := range n.Files {
		f := &n.Files[i]
		d := mk()
		for j, x := range f.Values {
			if d.Observe(x, f.TS[j]) {
				dets[i] = append(dets[i], j)
			}
		}
	}
	return scoreNAB(n, dets)
}

func scoreNAB(n *NAB, dets [][]int) nabScores {
	r := nabScores{cats: map[string][3]float64{}}
	for k, p := range n.Profiles {
		var all, even, odd FileScore
		cats := map[string]*FileScore{}
		for i := range n.Files {
			f := &n.Files[i]
			s := f.Score(dets[i], p)
			all.Add(s)
			if i%2 == 0 {
				even.Add(s)
			} else {
				odd.Add(s)
			}
			c := cats[f.Category()]
			if c == nil {
				c = &FileScore{}
				cats[f.Category()] = c
			}
			c.Add(s)
		}
		r.all[k], r.even[k], r.odd[k] = all.Normalized(), even.Normalized(), odd.Normalized()
		for name, c := range cats {
			v := r.cats[name]
			v[k] = c.Normalized()
			r.cats[name] = v
		}
		if k == 0 {
			r.alerts, r.fp, r.detected, r.wins = all.Alerts, all.FP, all.Detected, all.Windows
		}
	}
	return r
}

func printNAB(w io.Writer, name string, r nabScores) {
	cats := make([]string, 0, len(r.cats))
	for c := range r.cats {
		cats = append(cats, c)
	}
	sort.Strings(cats)
	var b strings.Builder
	for _, c := range cats {
		fmt.Fprintf(&b, " %s=%.0f", strings.TrimPrefix(c, "real"), r.cats[c][0])
	}
	fmt.Fprintf(w, "%-50s std %6.2f lowFP %6.2f lowFN %6.2f | even %6.2f odd %6.2f | alerts %4d fp %4d det %3d/%d |%s\n",
		name, r.all[0], r.all[1], r.all[2], r.even[0], r.odd[0], r.alerts, r.fp, r.detected, r.wins, b.String())
}
