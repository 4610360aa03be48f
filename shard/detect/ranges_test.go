package detect

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// TestRangesNAB scores the default detector (Ranges, T=5, cooldown 50) on
// NAB with one setting for every file. The figures are docs/detection.md's;
// a change to the detector that moves them must say so here.
func TestRangesNAB(t *testing.T) {
	n := loadNABOrSkip(t)
	r := runNAB(n, newStreamAlerter(defaultParams()))
	want := [3]float64{68.20, 58.35, 73.34}
	for k := range want {
		if math.Abs(r.All[k]-want[k]) > 0.005 {
			t.Errorf("%s: %.2f, want %.2f", n.Profiles[k].Name, r.All[k], want[k])
		}
	}
	t.Logf("standard %.2f, reward_low_FP_rate %.2f, reward_low_FN_rate %.2f; even files %.2f, odd %.2f; %d alerts, %d outside windows, %d of %d windows",
		r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows)
}

func TestRangesState(t *testing.T) {
	if s := unsafe.Sizeof(RangeState{}); s > 1024 {
		t.Errorf("RangeState takes %d bytes, want at most 1 KB a stream", s)
	}
	var d RangeState
	rng := rand.New(rand.NewPCG(3, 4))
	if a := testing.AllocsPerRun(1000, func() { d.Observe(rng.NormFloat64(), 0) }); a != 0 {
		t.Errorf("%g allocations a sample", a)
	}
}

// BenchmarkRanges runs beside BenchmarkObserve's zscore case: compare the
// two as a ratio in one run.
func BenchmarkRanges(b *testing.B) {
	var d RangeState
	xs := make([]float64, 4096)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range xs {
		xs[i] = 20 + rng.NormFloat64()
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Observe(xs[i&4095], int64(i)*300000)
	}
}

// TestRangeStateRoundTrip encodes a RangeState mid-stream, restores it,
// and checks both make the same decisions from then on, and that the
// decoder refuses what no RangeState can hold.
func TestRangeStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	next := func(i int) (float64, int64) {
		x := 20 + rng.NormFloat64() + 5*math.Sin(float64(i)/288*2*math.Pi)
		if i%997 == 0 {
			x += 40
		}
		return x, int64(i) * 300000
	}
	z := func(i int) bool { return i%41 == 0 || i%43 == 0 } // the z channel's input, sometimes too often
	var a RangeState
	for i := range 5000 {
		x, ts := next(i)
		a.Decide(x, ts, z(i))
	}
	enc := a.AppendBinary(nil)
	if len(enc) != RangeStateSize {
		t.Fatalf("encoding is %d bytes, RangeStateSize %d", len(enc), RangeStateSize)
	}
	var b RangeState
	if err := b.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if b != a {
		t.Fatalf("restored state differs")
	}
	alerts := 0
	for i := 5000; i < 20000; i++ {
		x, ts := next(i)
		if ga, gb := a.Decide(x, ts, z(i)), b.Decide(x, ts, z(i)); ga != gb {
			t.Fatalf("sample %d: original alerts %v, restored %v", i, ga, gb)
		} else if ga != ReasonNone {
			alerts++
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts compared")
	}
	for name, mut := range map[string]func([]byte) []byte{
		"short": func(b []byte) []byte { return b[:len(b)-1] },
		"long":  func(b []byte) []byte { return append(b, 0) },
		"NaN": func(b []byte) []byte {
			return binary.LittleEndian.AppendUint64(b[:len(b)-8], math.Float64bits(math.NaN()))
		},
		"Inf": func(b []byte) []byte {
			return binary.LittleEndian.AppendUint64(b[:len(b)-8], math.Float64bits(math.Inf(-1)))
		},
		"quiet":    func(b []byte) []byte { binary.LittleEndian.PutUint64(b[8:], rCool+1); return b },
		"negative": func(b []byte) []byte { binary.LittleEndian.PutUint64(b[0:], 1<<63); return b },
		"flag":     func(b []byte) []byte { b[24] = 2; return b },
		"z rate": func(b []byte) []byte {
			return binary.LittleEndian.AppendUint64(b[:len(b)-8], math.Float64bits(-1))
		},
	} {
		var c RangeState
		if err := c.UnmarshalBinary(mut(append([]byte(nil), enc...))); !errors.Is(err, ErrBadRangeState) {
			t.Errorf("%s: %v, want ErrBadRangeState", name, err)
		}
	}
}

// Encoding runs on the shard goroutine for every changed device every
// snapshot interval: it must not allocate beyond dst.
func TestRangeStateEncodeAllocs(t *testing.T) {
	var d RangeState
	for i := range 300 {
		d.Observe(float64(i%7), int64(i)*60000)
	}
	dst := make([]byte, 0, RangeStateSize)
	if a := testing.AllocsPerRun(100, func() { dst = d.AppendBinary(dst[:0]) }); a != 0 {
		t.Errorf("AppendBinary makes %g allocations", a)
	}
}

// TestRangeStateV1 restores the first encoding (snapshot version 3, with
// the likelihood channels since dropped): every field both encodings have
// comes back, the dropped ones are read past, and the z-score alert rate
// starts at 0.
func TestRangeStateV1(t *testing.T) {
	var a RangeState
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 3000 {
		a.Decide(20+rng.NormFloat64(), int64(i)*300000, i%300 == 0)
	}
	a.zrate = 0
	var v1 []byte
	for _, n := range [...]int64{int64(a.n), int64(a.quiet), 17, 18, a.t0} {
		v1 = binary.LittleEndian.AppendUint64(v1, uint64(n))
	}
	v1 = append(v1, 0)
	if a.sOn {
		v1[len(v1)-1] = 1
	}
	for _, f := range a.floatsV1() {
		x := 7.5 // a dropped field's
		if f != nil {
			x = *f
		}
		v1 = binary.LittleEndian.AppendUint64(v1, math.Float64bits(x))
	}
	if len(v1) != RangeStateSizeV1 || RangeStateSizeV1 != 697 {
		t.Fatalf("version 1 encoding is %d bytes, RangeStateSizeV1 %d, snapshot version 3 wrote 697", len(v1), RangeStateSizeV1)
	}
	var b RangeState
	if err := b.UnmarshalBinary(v1); err != nil {
		t.Fatal(err)
	}
	if b != a {
		t.Fatalf("restored %+v\nwant %+v", b, a)
	}
	binary.LittleEndian.PutUint64(v1[16:], 1<<63) // l1.n
	if err := b.UnmarshalBinary(v1); !errors.Is(err, ErrBadRangeState) {
		t.Errorf("negative likelihood count: %v, want ErrBadRangeState", err)
	}
}
