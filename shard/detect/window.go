package detect

import "math"

// Window is a ring of the last W values of one stream with O(1) mean and
// population standard deviation that stay exact to about 1e-14 relative.
//
// Plain running sums (and Welford with removal) lose every digit when the
// values sit far from zero compared with their spread, e.g. 1e9 ± 1e-3. The
// sums here are taken relative to ref, the window's mean at the last
// recompute, so the terms stay small. Rounding error grows with every term
// added or removed; mag1 and mag2 bound it, and the sums are recomputed from
// the ring in two passes when that bound could reach 1e-11 of the variance
// or 1e-13 of the mean's scale, and at the latest after W pushes, so the
// O(W) recompute costs O(1) amortised per value.
//
// The zero Window is unusable: make one with NewWindow (or NewWindowBuf). A
// Window is not safe for concurrent use; its shard goroutine owns it.
type Window struct {
	// vals is the ring. It grows to size values, then wraps; its capacity
	// may grow with it (a shard grows it from its slabs with Grow, see
	// makeRoom in package shard), so memory follows the values held, not W.
	vals []float64
	head int32   // index of the oldest value once full
	age  int32   // pushes since the last recompute
	size int32   // W
	ref  float64 // sums below are relative to ref
	s1   float64 // Σ(x-ref)
	s2   float64 // Σ(x-ref)²
	mag1 float64 // Σ|x-ref| over every term added or removed since recompute
	mag2 float64 // Σ(x-ref)² likewise
}

// MaxWindow is the largest window size a detector accepts (Params.Validate)
// and the most values a snapshot's window may hold.
const MaxWindow = 100000

// NewWindow returns an empty window holding at most size values.
func NewWindow(size int) Window {
	if size < 1 {
		panic("BUG: detect.NewWindow size must be positive")
	}
	return NewWindowBuf(size, make([]float64, 0, size))
}

// NewWindowBuf is NewWindow with its ring in buf's array (buf's length is
// ignored), for an owner that allocates rings itself: buf may hold fewer
// than size values, and the ring grows past its capacity as append would,
// unless the owner gives it a larger one first (Grow).
func NewWindowBuf(size int, buf []float64) Window {
	if size < 1 {
		panic("BUG: detect.NewWindowBuf size must be positive")
	}
	return Window{vals: buf[:0], size: int32(size)}
}

// Len returns how many values the window holds.
func (w *Window) Len() int { return len(w.vals) }

// Cap returns the window size W.
func (w *Window) Cap() int { return int(w.size) }

// Buf returns the ring: its length is Len, its capacity how many values the
// window holds before Push must grow it (see Grow). The caller must not
// change it while the window uses it.
func (w *Window) Buf() []float64 { return w.vals }

// Grow moves the ring, in ring order, into buf's array (buf's length is
// ignored; its capacity should be from Len to Cap), so that Push can fill
// it without Go growing the slice. The old ring is the caller's again.
func (w *Window) Grow(buf []float64) { w.vals = append(buf[:0], w.vals...) }

// Stats returns the mean and population standard deviation of the values in
// the window; both are zero when it is empty.
func (w *Window) Stats() (mean, stddev float64) {
	if len(w.vals) == 0 {
		return 0, 0
	}
	r := recip(len(w.vals))
	m := w.s1 * r
	v := w.s2*r - m*m
	if v < 0 {
		v = 0
	}
	return w.ref + m, math.Sqrt(v)
}

// Mean returns the mean Stats returns, without the stddev, cheaply enough
// to inline: a shard's per-name sums read it after every value.
func (w *Window) Mean() float64 { return w.ref + w.s1*recip(len(w.vals)) }

// recips[n] is 1/n. A sample's arithmetic multiplies by it where it would
// divide by a count (the window's length, the step's sample count): a
// division costs several multiplications' throughput, and every sample
// needed seven. The products round once more than the quotients (a relative
// 1e-16), far inside the window's 1e-14.
var recips = func() (t [stepMemory + 1]float64) {
	for n := 1; n < len(t); n++ {
		t[n] = 1 / float64(n)
	}
	return t
}()

func recip(n int) float64 {
	if uint(n) < uint(len(recips)) {
		return recips[n]
	}
	return 1 / float64(n)
}

// Push adds x to the window, evicting the oldest value when it is full.
func (w *Window) Push(x float64) {
	if len(w.vals) < int(w.size) {
		w.vals = append(w.vals, x) // within capacity when a shard made room
	} else {
		d := w.vals[w.head] - w.ref
		w.s1 -= d
		w.s2 -= d * d
		w.mag1 += math.Abs(d)
		w.mag2 += d * d
		w.vals[w.head] = x
		w.head++
		if int(w.head) == len(w.vals) {
			w.head = 0
		}
	}
	d := x - w.ref
	w.s1 += d
	w.s2 += d * d
	w.mag1 += math.Abs(d)
	w.mag2 += d * d
	w.age++
	if w.age >= w.size || w.illConditioned() {
		w.recompute()
	}
}

// illConditioned reports whether the accumulated rounding error could exceed
// about 2e-11 of the variance or 1e-13 of max(|mean|, stddev).
func (w *Window) illConditioned() bool {
	r := recip(len(w.vals))
	m := w.s1 * r
	v := w.s2*r - m*m
	if w.mag2*r+m*m > 1e5*v {
		return true
	}
	a := w.mag1 * r
	mean := w.ref + m
	return a*a > 2e5*(mean*mean+v)
}

// recompute resets the sums from the ring with a corrected two-pass mean.
// The passes run oldest first, not in ring order, so the rounding depends
// only on the values: a window restored from a snapshot (stored oldest
// first) recomputes bit for bit what the original does.
func (w *Window) recompute() {
	n := float64(len(w.vals))
	h := w.oldest()
	older, newer := w.vals[h:], w.vals[:h]
	ref := w.vals[h]
	var s float64
	for _, part := range [2][]float64{older, newer} {
		for _, x := range part {
			s += x - ref
		}
	}
	mean := ref + s/n
	var s1, s2, a float64
	for _, part := range [2][]float64{older, newer} {
		for _, x := range part {
			d := x - mean
			s1 += d
			s2 += d * d
			a += math.Abs(d)
		}
	}
	w.ref, w.s1, w.s2, w.mag1, w.mag2, w.age = mean, s1, s2, a, s2, 0
}

func (w *Window) oldest() int {
	if len(w.vals) < int(w.size) {
		return 0
	}
	return int(w.head)
}

// Ring returns the window's values, oldest first, as two parts of its ring
// (older then newer) without copying them, e.g. for encoding.
func (w *Window) Ring() (older, newer []float64) {
	h := w.oldest()
	return w.vals[h:], w.vals[:h]
}

// Values appends the window's values, oldest first, to dst.
func (w *Window) Values(dst []float64) []float64 {
	h := w.oldest()
	dst = append(dst, w.vals[h:]...)
	return append(dst, w.vals[:h]...)
}

// MinMax returns the smallest and largest values in the window.
func (w *Window) MinMax() (lo, hi float64) {
	if len(w.vals) == 0 {
		return 0, 0
	}
	lo, hi = w.vals[0], w.vals[0]
	for _, x := range w.vals[1:] {
		lo = math.Min(lo, x)
		hi = math.Max(hi, x)
	}
	return lo, hi
}

// WindowSums is a Window's internal state besides its values: what a
// snapshot saves so that a restored window computes exactly what the
// original would have, bit for bit.
type WindowSums struct {
	Ref, S1, S2, Mag1, Mag2 float64
	Age                     int32
}

// Sums returns w's running sums, for snapshots.
func (w *Window) Sums() WindowSums {
	return WindowSums{Ref: w.ref, S1: w.s1, S2: w.s2, Mag1: w.mag1, Mag2: w.mag2, Age: w.age}
}

// Load refills an empty w with vals (oldest first) and, when they all fit
// and ws is finite, the sums they were saved with (Sums); otherwise it
// recomputes them.
func (w *Window) Load(vals []float64, ws WindowSums) {
	if len(vals) > int(w.size) {
		vals = vals[len(vals)-int(w.size):]
		ws.Age = -1
	}
	w.vals, w.head = append(w.vals[:0], vals...), 0
	if len(vals) == 0 {
		return
	}
	ok := ws.Age >= 0 && ws.Age < w.size
	for _, f := range [...]float64{ws.Ref, ws.S1, ws.S2, ws.Mag1, ws.Mag2} {
		ok = ok && !math.IsNaN(f) && !math.IsInf(f, 0)
	}
	if !ok {
		w.recompute()
		return
	}
	w.ref, w.s1, w.s2, w.mag1, w.mag2, w.age = ws.Ref, ws.S1, ws.S2, ws.Mag1, ws.Mag2, ws.Age
}
