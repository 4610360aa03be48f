package detect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// RangeState is the state of the ranges detector (Kind Ranges) besides
// its window, one a stream. It is a detector built on the Numenta Anomaly
// Benchmark (see docs/detection.md): it alerts when a stream does
// something it has not done for a long while. Channels, any of which
// raises an alert (its Reason):
//
//   - the value, its 50-sample mean or its 100-sample volatility (mean
//     |x - previous x|) leaves the range it has kept, widened by a small
//     tolerance; the ranges fade toward the slow mean over ~20,000 samples,
//     so an old extreme stops masking new ones;
//   - a daily profile (24 hourly slots, interpolated, from ts): once two
//     days are seen, its smoothed residual leaving its range, but only
//     while the profile explains the stream (residual scale below 0.35 of
//     the slow scale), so strongly daily signals alert on a broken rhythm;
//   - the window's winsorised z-score (Stream decides it with the stream's
//     Params, as Winsor does), but only while such alerts are rare: fewer
//     than rZK in the last ~rZH samples. A stream whose z-score alerts
//     often is heavy-tailed or bursty, and its ranges judge it instead.
//
// The range channels warm up for 150 samples; after any alert the ranges
// are quiet for the next 30 samples. O(1) per sample, no allocations; the
// zero RangeState is ready to use. Not safe for concurrent use.
type RangeState struct {
	// Every field is touched by every sample except the profile's, of
	// which two slots are: the hot state spans 4 cache lines.
	n, quiet   int
	t0         int64   // ts of the first sample
	ms, ss     float64 // slow mean and |deviation| (W=1000), clipped
	m50        float64
	v, mv, px  float64 // volatility EWMA |dx| (W=100), its slow mean, last x
	rx, rm, rv span    // fading ranges of x, m50 and v
	res, es    float64 // profile residual EWMA (W=30), EWMA |residual| (W=1000)
	rs         span
	zrate      float64 // z-score alerts in the last ~rZH samples (EWMA)
	sOn        bool
	prof       [24]slot
}

// slot is one hour of the daily profile: its level and how much it has
// learnt (in samples, shared between neighbouring slots).
type slot struct{ p, c float64 }

const (
	rWs    = 1000.0
	rW50   = 50.0
	rWv    = 100.0
	rWr    = 30.0 // profile residual smoothing
	rClip  = 4.0  // deviations enter the slow baseline clipped to rClip scales
	rTolX  = 0.05
	rTolM  = 0.01
	rTolV  = 0.05
	rTolS  = 0.05
	rGate  = 0.35
	rAp    = 0.05 // profile learning-rate floor
	rDays  = 2    // the profile channel starts after this many days
	rFade  = 20000.0
	rCool  = 30
	rGrow  = 1.5
	rZH    = 1000.0 // horizon of the z channel's alert rate, in samples
	rZK    = 2.0    // z-score alerts pass while fewer than this in rZH
	rWarm  = 150
	hourMs = 3600000
	dayMs  = 24 * hourMs
)

// Reason names the channel that raised an alert.
type Reason uint8

const (
	ReasonNone       Reason = iota
	ReasonZ                 // |z| against the window reached the threshold
	ReasonValue             // the value left its long-run range
	ReasonMean              // the 50-sample mean left its range
	ReasonVolatility        // the 100-sample volatility rose above its range
	ReasonDaily             // the daily profile's residual left its range
	numReasons
)

var reasonNames = [numReasons]string{"", "z", "value_range", "mean_range", "volatility", "daily_profile"}

// String is the name the API shows ("" for ReasonNone).
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Valid reports whether r is a Reason this version knows (ReasonNone
// included).
func (r Reason) Valid() bool { return r < numReasons }

// ParseReason returns the Reason named s (by String).
func ParseReason(s string) (Reason, bool) {
	for r, name := range reasonNames {
		if s == name {
			return Reason(r), true
		}
	}
	return 0, false
}

// Observe scores x, taken at ts (unix ms), with the range channels alone
// (no z-score channel), and reports whether they alert.
func (d *RangeState) Observe(x float64, ts int64) bool { return d.Decide(x, ts, false) != ReasonNone }

// Decide scores x, taken at ts (unix ms): z says whether the window's
// z-score test alerted on it. It returns the channel that alerts, if any.
func (d *RangeState) Decide(x float64, ts int64, z bool) Reason {
	r := d.ranges(x, ts)
	zok := z && d.zrate < rZK
	if z {
		d.zrate++
	}
	d.zrate -= d.zrate * (1 / rZH)
	switch {
	case r != ReasonNone:
		return r
	case zok && d.quiet == 0:
		d.quiet = rCool
		return ReasonZ
	}
	return ReasonNone
}

// ranges runs the range channels.
func (d *RangeState) ranges(x float64, ts int64) Reason {
	d.n++
	if d.n == 1 {
		d.ms, d.m50, d.px = x, x, x
		d.rx, d.rm = span{x, x}, span{x, x}
		d.t0 = ts
	}
	// What the state learns is x held to within rGrow widths of the value
	// range: a real shift gets there in a few samples, the range growing
	// (1+rGrow)-fold a sample, while one glitch (a 1e150 among values
	// near 1) no longer blinds every channel for millions of samples.
	// The value range judges x itself.
	raw := x
	w := d.rx.width()
	if lo := d.rx.lo - rGrow*w; x < lo {
		x = lo
	} else if hi := d.rx.hi + rGrow*w; x > hi {
		x = hi
	}
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
	pi, pj := &d.prof[i], &d.prof[j]
	if pi.c == 0 {
		pi.p = x
	}
	if pj.c == 0 {
		pj.p = x
	}
	e := x - ((1-f)*pi.p + f*pj.p)
	pi.c += 1 - f
	pj.c += f
	ai, aj := rAp, rAp
	if pi.c < 1/rAp {
		ai = 1 / pi.c
	}
	if pj.c < 1/rAp {
		aj = 1 / pj.c
	}
	pi.p += ai * (1 - f) * e
	pj.p += aj * f * e
	if d.n == 1 {
		return ReasonNone
	}
	on := d.n > rWarm
	d.res += 2 / (rWr + 1) * (e - d.res)
	d.es += 2 / (rWs + 1) * (math.Abs(e) - d.es)
	daily := false
	if ts-d.t0 >= rDays*dayMs {
		if !d.sOn {
			d.sOn, d.rs = true, span{d.res, d.res}
		}
		daily = d.rs.out(d.res, rTolS, 0, on && d.es < rGate*d.ss)
	}
	ds := clip(x-d.ms, d.ss, rClip)
	d.ms += 2 / (rWs + 1) * ds
	d.ss += 2 / (rWs + 1) * (math.Abs(ds) - d.ss)
	d.m50 += 2 / (rW50 + 1) * (x - d.m50)
	d.v += 2 / (rWv + 1) * (math.Abs(x-d.px) - d.v)
	d.px = x
	if d.n == 2 {
		d.rv, d.mv = span{d.v, d.v}, d.v
	}
	d.mv += (d.v - d.mv) * (1 / rFade)
	// Every range takes its value in, alerting or not; the first that
	// alerts names the alert.
	why := ReasonNone
	if d.rx.outIn(raw, x, rTolX, d.ms, on) {
		why = ReasonValue
	}
	if d.rm.out(d.m50, rTolM, d.ms, on) && why == ReasonNone {
		why = ReasonMean
	}
	vhi := d.rv.hi
	if d.rv.out(d.v, rTolV, d.mv, on && d.n > 2*rWv) && d.v > vhi && why == ReasonNone { // volatility alerts only on a rise
		why = ReasonVolatility
	}
	if daily && why == ReasonNone {
		why = ReasonDaily
	}
	if on && d.quiet == 0 && why != ReasonNone {
		d.quiet = rCool
		return why
	}
	if d.quiet > 0 {
		d.quiet--
	}
	return ReasonNone
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
	o := false
	if on {
		w := tol * r.width()
		o = v > r.hi+w || v < r.lo-w
	}
	// Values are finite, so plain comparisons do what min and max would,
	// without their NaN and signed-zero branches.
	if in < r.lo {
		r.lo = in
	}
	if in > r.hi {
		r.hi = in
	}
	r.hi -= (r.hi - c) * (1 / rFade)
	r.lo -= (r.lo - c) * (1 / rFade)
	return o
}

// width is hi - lo, at least a billionth of the ends' magnitude (and of 1).
func (r *span) width() float64 {
	m := math.Abs(r.lo)
	if a := math.Abs(r.hi); a > m {
		m = a
	}
	if m < 1 {
		m = 1
	}
	w := r.hi - r.lo
	if f := 1e-9 * m; w < f {
		w = f
	}
	return w
}

// clip limits d to ±k·s; s <= 0 leaves it as is.
func clip(d, s, k float64) float64 {
	if s <= 0 {
		return d
	}
	return max(-k*s, min(k*s, d))
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
	add(&d.ms, &d.ss, &d.m50, &d.v, &d.mv, &d.px, &d.rx.lo, &d.rx.hi, &d.rm.lo, &d.rm.hi, &d.rv.lo, &d.rv.hi)
	for k := range d.prof {
		add(&d.prof[k].p, &d.prof[k].c)
	}
	add(&d.res, &d.es, &d.rs.lo, &d.rs.hi, &d.zrate)
	return fs
}

// floatsV1 is floats for the first encoding (snapshot version 3), whose
// likelihood channels are gone: nil for their fields.
func (d *RangeState) floatsV1() (fs [rangeFloatsV1]*float64) {
	i := 10 + 1 + 2                                                               // m, s, ring, sum: the point likelihood's
	fs[i+4], fs[i+5], fs[i+6], fs[i+7], fs[i+8] = &d.ms, &d.ss, nil, &d.m50, &d.v // l1, l2, then mf
	i += 9
	add := func(ps ...*float64) {
		for _, p := range ps {
			fs[i] = p
			i++
		}
	}
	add(&d.mv, &d.px, &d.rx.lo, &d.rx.hi, &d.rm.lo, &d.rm.hi, &d.rv.lo, &d.rv.hi)
	for k := range d.prof {
		add(&d.prof[k].p, &d.prof[k].c)
	}
	add(&d.res, &d.es, &d.rs.lo, &d.rs.hi)
	return fs
}

const (
	rangeFloats   = 12 + 2*24 + 5
	rangeFloatsV1 = 2 + 10 + 18 + 2*24 + 4
)

// RangeStateSize is the length of a RangeState's encoding, and
// RangeStateSizeV1 that of the first encoding (snapshot version 3).
const (
	RangeStateSize   = 3*8 + 1 + 8*rangeFloats
	RangeStateSizeV1 = 5*8 + 1 + 8*rangeFloatsV1
)

// AppendBinary appends d's encoding, RangeStateSize bytes, to dst, for
// snapshots.
func (d *RangeState) AppendBinary(dst []byte) []byte {
	for _, n := range [...]int64{int64(d.n), int64(d.quiet), d.t0} {
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

// MaxStateMag bounds every field of a RangeState fed values within
// ±1e150 (a hundred times the bound, for rounding and the spreads).
const MaxStateMag = 1e152

// ErrBadRangeState is returned by UnmarshalBinary for an encoding that no
// RangeState fed finite values can have.
var ErrBadRangeState = errors.New("bad ranges detector state")

// UnmarshalBinary restores what AppendBinary encoded: RangeStateSize
// bytes, every float finite and every count in its range. It also takes
// the first encoding (RangeStateSizeV1 bytes) and drops its likelihood
// channels' state.
func (d *RangeState) UnmarshalBinary(b []byte) error {
	v1 := len(b) == RangeStateSizeV1
	if len(b) != RangeStateSize && !v1 {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadRangeState, len(b), RangeStateSize)
	}
	var all [5]int64
	ints := all[:3]
	if v1 {
		ints = all[:]
	}
	for i := range ints {
		ints[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	b = b[8*len(ints):]
	if v1 { // n, quiet, l1.n, l2.n, t0
		if ints[2] < 0 || ints[3] < 0 {
			return fmt.Errorf("%w: negative count", ErrBadRangeState)
		}
		ints[2] = ints[4]
	}
	switch {
	case ints[0] < 0:
		return fmt.Errorf("%w: negative count", ErrBadRangeState)
	case ints[1] < 0 || ints[1] > rCool:
		return fmt.Errorf("%w: quiet %d, want 0 to %d", ErrBadRangeState, ints[1], rCool)
	case b[0] > 1:
		return fmt.Errorf("%w: flag %d", ErrBadRangeState, b[0])
	}
	var st RangeState
	st.n, st.quiet, st.t0, st.sOn = int(ints[0]), int(ints[1]), ints[2], b[0] == 1
	b = b[1:]
	var fs []*float64
	if v1 {
		a := st.floatsV1()
		fs = a[:]
	} else {
		a := st.floats()
		fs = a[:]
	}
	var skip float64
	for i, f := range fs {
		if f == nil {
			f = &skip
		}
		*f = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		if math.IsNaN(*f) || math.IsInf(*f, 0) {
			return fmt.Errorf("%w: value %d is %g", ErrBadRangeState, i, *f)
		}
	}
	if st.zrate < 0 || st.zrate > rZH {
		return fmt.Errorf("%w: z-score alert rate %g, want 0 to %g", ErrBadRangeState, st.zrate, rZH)
	}
	// Values fed are within ±1e150 (the service refuses larger ones), and
	// every field is a mean, an end or a spread of them: beyond
	// MaxStateMag a state is garbage, and sums of its fields could
	// overflow to NaN a few samples on.
	for i, f := range fs {
		if f != nil && !(math.Abs(*f) <= MaxStateMag) {
			return fmt.Errorf("%w: value %d is %g, beyond %g", ErrBadRangeState, i, *f, MaxStateMag)
		}
	}
	for _, f := range [...]float64{st.ss, st.es, st.v, st.mv} {
		if f < 0 {
			return fmt.Errorf("%w: a negative spread %g", ErrBadRangeState, f)
		}
	}
	for _, sl := range st.prof {
		if sl.c < 0 {
			return fmt.Errorf("%w: a negative profile count %g", ErrBadRangeState, sl.c)
		}
	}
	*d = st
	return nil
}
