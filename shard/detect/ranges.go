package detect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// RangeState is the state of the ranges detector (Kind Ranges), one a
// stream. It is a detector built on the Numenta Anomaly Benchmark (see
// docs/detection.md): it alerts when a stream does something it has not
// done for a long while. Channels, any of which raises an alert:
//
//   - the value, its 50-sample mean or its 100-sample volatility (mean
//     |x - previous x|) leaves the range it has kept, widened by a small
//     tolerance; the ranges fade toward the slow mean over ~20,000 samples,
//     so an old extreme stops masking new ones;
//   - a point likelihood: a 10-sample mean of robust |z| (against an EWMA
//     mean and mean absolute deviation, W=100) far above its own history;
//   - a shift likelihood: a 10-sample mean far from a 1,000-sample mean,
//     relative to that likelihood's own history;
//   - a daily profile (24 hourly slots, interpolated, from ts): once two
//     days are seen, its smoothed residual leaving its range, but only
//     while the profile explains the stream (residual scale below 0.35 of
//     the slow scale), so strongly daily signals alert on a broken rhythm.
//
// It warms up for 150 samples; after an alert the stream is quiet for the
// next 30. O(1) per sample, no
// allocations; the zero RangeState is ready to use. Not safe for concurrent
// use.
type RangeState struct {
	n, quiet   int
	t0         int64   // ts of the first sample
	m, s       float64 // point baseline: EWMA mean and |deviation|, W=100, clipped
	ring       [rK]float64
	sum        float64 // of ring
	l1, l2     likelihood
	ms, ss, mf float64 // slow mean and |deviation| (W=1000), fast mean (W=10)
	m50        float64
	v, mv, px  float64 // volatility EWMA |dx| (W=100), its slow mean, last x
	rx, rm, rv span    // fading ranges of x, m50 and v
	prof, cnt  [24]float64
	res, es    float64 // profile residual EWMA (W=30), EWMA |residual| (W=1000)
	rs         span
	sOn        bool
}

const (
	rK    = 10
	rW    = 100.0
	rWf   = 10.0
	rWs   = 1000.0
	rW50  = 50.0
	rWv   = 100.0
	rWr   = 30.0 // profile residual smoothing
	rClip = 4.0  // deviations enter the baselines clipped to rClip scales
	rCap  = 50.0 // largest robust |z| the likelihoods take in
	rL    = 1000.0
	rT1   = 7.0 // point likelihood threshold, in its own sds
	rT2   = 6.0 // shift likelihood threshold
	rTolX = 0.05
	rTolM = 0.01
	rTolV = 0.05
	rTolS = 0.05
	rGate = 0.35
	rAp   = 0.05 // profile learning-rate floor
	rDays = 2    // the profile channel starts after this many days
	rFade = 20000.0
	rCool = 30
	rGrow = 1.5
	// rLikMin is the least rise a likelihood takes for an alert, in its
	// log1p units: on a flat stream its variance is ~0, and a rounding
	// step was 7 of its sds.
	rLikMin = 0.5
	rWarm   = 150
	hourMs  = 3600000
	dayMs   = 24 * hourMs
)

// Observe scores x, taken at ts (unix ms), and reports whether it alerts.
func (d *RangeState) Observe(x float64, ts int64) bool {
	d.n++
	if d.n == 1 {
		d.m, d.ms, d.mf, d.m50, d.px = x, x, x, x, x
		d.rx, d.rm = span{x, x}, span{x, x}
		d.t0 = ts
	}
	// What the state learns is x held to within rGrow widths of the value
	// range: a real shift gets there in a few samples, the range growing
	// (1+rGrow)-fold a sample, while one glitch (a 1e150 among values
	// near 1) no longer blinds every channel for millions of samples.
	// The value range judges x itself.
	raw := x
	w := max(d.rx.hi-d.rx.lo, 1e-9*max(1, math.Abs(d.rx.lo), math.Abs(d.rx.hi)))
	x = max(d.rx.lo-rGrow*w, min(d.rx.hi+rGrow*w, x))
	// The daily profile, from the first sample on: slots centred at half
	// past each hour, x shared between the two nearest.
	ms := ts%dayMs - hourMs/2
	for ms < 0 { // at most twice, for ts before 1970
		ms += dayMs
	}
	i := int(ms / hourMs)
	f := float64(ms%hourMs) * (1.0 / hourMs)
	j := i + 1
	if j == 24 {
		j = 0
	}
	if d.cnt[i] == 0 {
		d.prof[i] = x
	}
	if d.cnt[j] == 0 {
		d.prof[j] = x
	}
	e := x - ((1-f)*d.prof[i] + f*d.prof[j])
	d.cnt[i] += 1 - f
	d.cnt[j] += f
	ai, aj := rAp, rAp
	if d.cnt[i] < 1/rAp {
		ai = 1 / d.cnt[i]
	}
	if d.cnt[j] < 1/rAp {
		aj = 1 / d.cnt[j]
	}
	d.prof[i] += ai * (1 - f) * e
	d.prof[j] += aj * f * e
	if d.n == 1 {
		return false
	}
	on := d.n > rWarm
	d.res += 2 / (rWr + 1) * (e - d.res)
	d.es += 2 / (rWs + 1) * (math.Abs(e) - d.es)
	sout := false
	if ts-d.t0 >= rDays*dayMs {
		if !d.sOn {
			d.sOn, d.rs = true, span{d.res, d.res}
		}
		sout = d.rs.out(d.res, rTolS, 0, on && d.es < rGate*d.ss)
	}
	// The point likelihood.
	eps := 1e-9 * max(1, math.Abs(d.m))
	dev := x - d.m
	score := min(math.Abs(dev)/max(d.s, eps), rCap)
	dev = clip(dev, d.s, rClip)
	d.m += 2 / (rW + 1) * dev
	d.s += 2 / (rW + 1) * (math.Abs(dev) - d.s)
	k := d.n % rK
	d.sum += score - d.ring[k]
	d.ring[k] = score
	z1 := d.l1.over(fastLog1p(d.sum*(1.0/rK)), rT1)
	// The shift likelihood.
	z2 := d.l2.over(fastLog1p(min(math.Abs(d.mf-d.ms)/max(d.ss, eps), rCap)), rT2)
	ds := clip(x-d.ms, d.ss, rClip)
	d.ms += 2 / (rWs + 1) * ds
	d.ss += 2 / (rWs + 1) * (math.Abs(ds) - d.ss)
	d.mf += 2 / (rWf + 1) * (x - d.mf)
	// The ranges.
	d.m50 += 2 / (rW50 + 1) * (x - d.m50)
	d.v += 2 / (rWv + 1) * (math.Abs(x-d.px) - d.v)
	d.px = x
	if d.n == 2 {
		d.rv, d.mv = span{d.v, d.v}, d.v
	}
	d.mv += (d.v - d.mv) * (1 / rFade)
	out := d.rx.outIn(raw, x, rTolX, d.ms, on) || sout
	out = d.rm.out(d.m50, rTolM, d.ms, on) || out
	vhi := d.rv.hi
	out = d.rv.out(d.v, rTolV, d.mv, on && d.n > 2*rWv) && d.v > vhi || out // volatility alerts only on a rise
	if on && d.quiet == 0 && (out || z1 || z2) {
		d.quiet = rCool
		return true
	}
	if d.quiet > 0 {
		d.quiet--
	}
	return false
}

// span is a fading range.
type span struct{ lo, hi float64 }

// out reports whether v (when on) leaves the range widened by tol × its
// width, at least a billionth of its ends' magnitude (so a flat range
// judges the first departure, and a rounding step does not count), then
// takes v in and fades both ends toward c by 1/rFade.
func (r *span) out(v, tol, c float64, on bool) bool { return r.outIn(v, v, tol, c, on) }

// outIn is out judging v but taking in in.
func (r *span) outIn(v, in, tol, c float64, on bool) bool {
	w := max(r.hi-r.lo, 1e-9*max(1, math.Abs(r.lo), math.Abs(r.hi)))
	o := on && (v > r.hi+tol*w || v < r.lo-tol*w)
	r.lo, r.hi = min(r.lo, in), max(r.hi, in)
	r.hi -= (r.hi - c) * (1 / rFade)
	r.lo -= (r.lo - c) * (1 / rFade)
	return o
}

// likelihood is the running mean and variance of a score.
type likelihood struct {
	mu, va float64
	n      int
}

// over reports whether v is at least T sds above the running mean of
// earlier values, then takes v in (alpha 1/n for the first rL, then 1/rL).
func (l *likelihood) over(v, T float64) bool {
	l.n++
	e := v - l.mu
	o := l.va > 0 && e >= T*math.Sqrt(l.va) && e >= rLikMin
	al := 1 / rL
	if l.n < rL {
		al = 1 / float64(l.n)
	}
	l.mu += al * e
	l.va = (1 - al) * (l.va + al*e*e)
	return o
}

// clip limits d to ±k·s; s <= 0 leaves it as is.
func clip(d, s, k float64) float64 {
	if s <= 0 {
		return d
	}
	return max(-k*s, min(k*s, d))
}

// fastLog1p is log(1+y) for y >= 0 to about 1e-4: the exponent's bits
// plus three terms of the atanh series, several times cheaper than
// math.Log1p, and the scores it feeds need no more.
func fastLog1p(y float64) float64 {
	b := math.Float64bits(1 + y)
	e := float64(int((b>>52)&0x7ff) - 1023)
	m := math.Float64frombits(b&^(0x7ff<<52) | 1023<<52)
	s := (m - 1) / (m + 1)
	s2 := s * s
	return e*math.Ln2 + 2*s*(1+s2*(1.0/3+s2*(1.0/5)))
}

// floats lists every float field of d, in the order of its encoding. An
// array, not a slice: encoding runs on the shard goroutine for every
// changed device every snapshot interval and must not allocate.
func (d *RangeState) floats() (fs [rangeFloats]*float64) {
	i := 0
	add := func(ps ...*float64) {
		for _, p := range ps {
			fs[i] = p
			i++
		}
	}
	add(&d.m, &d.s)
	for k := range d.ring {
		add(&d.ring[k])
	}
	add(&d.sum, &d.l1.mu, &d.l1.va, &d.l2.mu, &d.l2.va, &d.ms, &d.ss, &d.mf, &d.m50, &d.v, &d.mv, &d.px,
		&d.rx.lo, &d.rx.hi, &d.rm.lo, &d.rm.hi, &d.rv.lo, &d.rv.hi)
	for k := range d.prof {
		add(&d.prof[k], &d.cnt[k])
	}
	add(&d.res, &d.es, &d.rs.lo, &d.rs.hi)
	return fs
}

const rangeFloats = 2 + rK + 18 + 2*24 + 4

// RangeStateSize is the length of a RangeState's encoding.
const RangeStateSize = 5*8 + 1 + 8*rangeFloats

// AppendBinary appends d's encoding, RangeStateSize bytes, to dst, for
// snapshots.
func (d *RangeState) AppendBinary(dst []byte) []byte {
	for _, n := range [...]int64{int64(d.n), int64(d.quiet), int64(d.l1.n), int64(d.l2.n), d.t0} {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(n))
	}
	sOn := byte(0)
	if d.sOn {
		sOn = 1
	}
	dst = append(dst, sOn)
	for _, f := range d.floats() {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(*f))
	}
	return dst
}

// ErrBadRangeState is returned by UnmarshalBinary for an encoding that no
// RangeState fed finite values can have.
var ErrBadRangeState = errors.New("bad ranges detector state")

// UnmarshalBinary restores what AppendBinary encoded: RangeStateSize
// bytes, every float finite and every count in its range.
func (d *RangeState) UnmarshalBinary(b []byte) error {
	if len(b) != RangeStateSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadRangeState, len(b), RangeStateSize)
	}
	var ints [5]int64
	for i := range ints {
		ints[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	b = b[8*len(ints):]
	switch {
	case ints[0] < 0 || ints[2] < 0 || ints[3] < 0:
		return fmt.Errorf("%w: negative count", ErrBadRangeState)
	case ints[1] < 0 || ints[1] > rCool:
		return fmt.Errorf("%w: quiet %d, want 0 to %d", ErrBadRangeState, ints[1], rCool)
	case b[0] > 1:
		return fmt.Errorf("%w: flag %d", ErrBadRangeState, b[0])
	}
	var st RangeState
	st.n, st.quiet, st.l1.n, st.l2.n, st.t0, st.sOn = int(ints[0]), int(ints[1]), int(ints[2]), int(ints[3]), ints[4], b[0] == 1
	b = b[1:]
	fs := st.floats()
	for i, f := range fs {
		*f = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		if math.IsNaN(*f) || math.IsInf(*f, 0) {
			return fmt.Errorf("%w: value %d is %g", ErrBadRangeState, i, *f)
		}
	}
	*d = st
	return nil
}
