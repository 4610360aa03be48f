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

// runNAB streams every file through a fresh detector from mk.
func runNAB(n *NAB, mk func() alerter) Report {
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
	return n.Evaluate(dets)
}

func printNAB(w io.Writer, name string, r Report) {
	cats := make([]string, 0, len(r.Categories))
	for c := range r.Categories {
		cats = append(cats, c)
	}
	sort.Strings(cats)
	var b strings.Builder
	for _, c := range cats {
		fmt.Fprintf(&b, " %s=%.0f", strings.TrimPrefix(c, "real"), r.Categories[c][0])
	}
	fmt.Fprintf(w, "%-50s std %6.2f lowFP %6.2f lowFN %6.2f | even %6.2f odd %6.2f | alerts %4d fp %4d det %3d/%d |%s\n",
		name, r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows, b.String())
}
