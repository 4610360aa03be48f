package detect

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
