package detect

import (
	"fmt"
	"math"
	"os"
	"testing"
)

// expA: EWMA baseline, raw score |z|, anomaly likelihood of a short mean of
// raw scores against their long-run mean and spread.
type expA struct {
	a, al, as  float64 // alphas: baseline, long score stats, short score mean
	thr        float64
	cool       int
	warm       int
	n          int
	m, v       float64
	sm, sv, sh float64
	quiet      int
	clip       float64
}

func (d *expA) Observe(x float64, ts int64) bool {
	d.n++
	if d.n == 1 {
		d.m = x
		return false
	}
	sd := math.Sqrt(d.v)
	s := math.Abs(x-d.m) / max(sd, 1e-9*max(1, math.Abs(d.m)))
	if d.n < 3 {
		s = 0
	}
	// baseline update with clipped value
	in := x
	if sd > 0 && math.Abs(x-d.m) > d.clip*sd {
		in = d.m + math.Copysign(d.clip*sd, x-d.m)
	}
	dd := in - d.m
	d.m += d.a * dd
	d.v = (1 - d.a) * (d.v + d.a*dd*dd)
	sc := min(s, 50)
	d.sh += d.as * (sc - d.sh)
	L := 0.0
	if d.sv > 0 {
		L = (d.sh - d.sm) / math.Sqrt(d.sv)
	}
	e := sc - d.sm
	d.sm += d.al * e
	d.sv = (1 - d.al) * (d.sv + d.al*e*e)
	alert := false
	if d.quiet > 0 {
		d.quiet--
	} else if d.n > d.warm && L >= d.thr {
		alert = true
		d.quiet = d.cool
	}
	return alert
}

func TestNABExplore(t *testing.T) {
	if !*nabExplore {
		t.Skip("-nabexp not set")
	}
	n := loadNABOrSkip(t)
	for _, W := range []float64{100, 200, 500, 1000} {
		for _, al := range []float64{0.002, 0.005, 0.02} {
			for _, as := range []float64{0.3, 0.6, 1} {
				for _, thr := range []float64{2, 2.5, 3} {
					for _, cool := range []int{50, 100, 200} {
						name := fmt.Sprintf("A W=%g al=%g as=%g T=%g cool=%d", W, al, as, thr, cool)
						r := runNAB(n, func() alerter {
							return &expA{a: 2 / (W + 1), al: al, as: as, thr: thr, cool: cool, warm: 50, clip: 4}
						})
						printNAB(os.Stdout, name, r)
					}
				}
			}
		}
	}
}

// expB: EWMA baseline, raw score |z| smoothed over a few samples; alert
// when it breaks a slowly decaying record of earlier scores by a factor.
type expB struct {
	a, as       float64
	decay       float64 // per sample, record multiplier toward 0
	k, floor    float64
	warm        int
	n           int
	m, v        float64
	sh, rec     float64
	clip        float64
	cool, quiet int
}

func (d *expB) Observe(x float64, ts int64) bool {
	d.n++
	if d.n == 1 {
		d.m = x
		return false
	}
	sd := math.Sqrt(d.v)
	s := math.Abs(x-d.m) / max(sd, 1e-9*max(1, math.Abs(d.m)))
	if d.n < 3 {
		s = 0
	}
	in := x
	if sd > 0 && math.Abs(x-d.m) > d.clip*sd {
		in = d.m + math.Copysign(d.clip*sd, x-d.m)
	}
	dd := in - d.m
	d.m += d.a * dd
	d.v = (1 - d.a) * (d.v + d.a*dd*dd)
	d.sh += d.as * (min(s, 1e6) - d.sh)
	alert := false
	if d.quiet > 0 {
		d.quiet--
	}
	if d.n > d.warm && d.sh >= d.floor && d.sh > d.k*d.rec && d.quiet == 0 {
		alert = true
		d.quiet = d.cool
	}
	d.rec = max(d.rec*d.decay, d.sh)
	return alert
}

func TestNABExploreB(t *testing.T) {
	if !*nabExplore {
		t.Skip("-nabexp not set")
	}
	n := loadNABOrSkip(t)
	for _, W := range []float64{50, 200, 1000} {
		for _, as := range []float64{0.3, 1} {
			for _, H := range []float64{500, 2000, 8000} {
				for _, k := range []float64{1, 1.2, 1.5} {
					for _, floor := range []float64{2, 3, 4} {
						name := fmt.Sprintf("B W=%g as=%g H=%g k=%g floor=%g", W, as, H, k, floor)
						r := runNAB(n, func() alerter {
							return &expB{a: 2 / (W + 1), as: as, decay: 1 - 1/H, k: k, floor: floor, warm: 50, clip: 4, cool: 10}
						})
						printNAB(os.Stdout, name, r)
					}
				}
			}
		}
	}
}
