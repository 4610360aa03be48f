package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"ai-load-service/shard/detect"
)

// Snapshot is a copy of one device's state, taken by its shard goroutine
// and handed to the persister: everything the device route shows and the
// detectors need. Detector settings are not in it: they come from the
// configuration when the snapshot is restored.
type Snapshot struct {
	Device string
	// Gen counts the device's snapshots across members and restarts, each
	// one more than the state it was taken from: a store refuses to write
	// a snapshot over one with a greater Gen (a stale owner's; see
	// persist's fencing). Zero in version 1 snapshots.
	Gen     uint64
	Streams []StreamSnapshot
	// Unsaved says the snapshot came from somewhere other than the Store's
	// own storage (another member handed it over): the device is marked
	// changed once restored, so it is written. Not encoded.
	Unsaved bool
	History []Anomaly // oldest first
}

// StreamSnapshot is one metric's state.
type StreamSnapshot struct {
	Name      string
	Values    []float64 // the window, oldest first
	Count     uint64
	Anomalies uint64
	Anomalous uint64
	Last      float64
	LastZ     float64
	UpdatedTS int64
	EWMean    float64
	EWVar     float64
	Step      float64
	Quiet     int32
	AlertZ    float64
	// The window's running sums, so a restored stream computes exactly
	// what the original would have, bit for bit.
	Sums detect.WindowSums
	// Ranges is the Ranges detector's state (version 3), nil when the
	// stream has none. From namedStream.state it is the stream's own:
	// encode it before the stream takes another sample.
	Ranges *detect.RangeState
	// CoolUntil is the time cooldown's end (version 4).
	CoolUntil int64
}

// snapshotVersion is the first byte of every encoded snapshot. Version 2
// adds Gen, at a fixed place a Redis script can read: after the version
// byte, newerMagic and the device ID, 8 bytes big-endian. Version 1 (no
// magic, no Gen) is still read. Version 3 adds each stream's Ranges
// detector state after its window (a byte, 0 for none, 1 for the
// detect.RangeStateSizeV1 bytes of the state); a version 2
// stream restores without it, and a Ranges stream then warms up again.
// Version 4 carries the Ranges state in its second encoding
// (detect.RangeStateSize bytes) and each alert's Reason after its Z (a
// byte); a version 3 alert restores with ReasonNone. Each stream ends with
// its CoolUntil (a varint).
const snapshotVersion = 4

// The decoder has no limits of its own on how many streams, alerts or
// bytes of a name a snapshot holds: what the encoder writes is only bounded
// by settings that can change between runs, and a fixed decoder limit
// refused what an encoder had written (a device with 65,600 metric names
// was persisted, then lost as corrupt on restore). Instead each count is
// bounded by the bytes left, at the fewest bytes its items take, so a
// corrupt count cannot ask for more memory than a small multiple of the
// value's size. Window values are the exception: a window holds at most
// detect.MaxWindow, the largest WINDOW_SIZE, and the bounds below rely on
// it.
const (
	minStreamBytes = 1 + 6 + 11*8 + 1 // name length, six varints, eleven floats, value count
	minAlertBytes  = 1 + 1 + 4*8      // metric name length, ts, four floats (and a reason byte from version 4)
)

// MaxValue bounds the magnitude of every value a Set is given (the server
// refuses larger ones), so that squared deviations cannot overflow.
const MaxValue = 1e150

// Bounds a decoder checks a snapshot's values against. A stream fed values
// within ±MaxValue keeps its window, means and last value within them (a
// clipped value lies between a mean and the value itself), with room for
// rounding: a value's deviation from a window mean is at most maxDev, and
// the running sums add at most 3·MaxWindow such terms (a recompute's
// window, then fewer than W pushes of two terms each). From state within
// them every statistic a detector computes is finite.
const (
	maxStored = 2 * MaxValue
	maxDev    = 2 * maxStored
	maxMag    = 3 * detect.MaxWindow * maxDev
	maxMag2   = maxMag * maxDev
)

// AppendBinary appends the versioned binary encoding of s to dst.
func (s *Snapshot) AppendBinary(dst []byte) []byte {
	dst = appendHeader(dst, s.Device, s.Gen, len(s.Streams))
	for i := range s.Streams {
		dst = appendStream(dst, &s.Streams[i], s.Streams[i].Values, nil)
	}
	return appendHistory(dst, s.History, nil)
}

func appendHeader(dst []byte, device string, gen uint64, streams int) []byte {
	dst = append(dst, snapshotVersion)
	dst = append(dst, newerMagic...)
	dst = appendString(dst, device)
	dst = binary.BigEndian.AppendUint64(dst, gen)
	return binary.AppendUvarint(dst, uint64(streams))
}

// appendStream encodes st with its window given as v1 then v2, so a ring
// can be written in order without copying it first (st.Values is ignored).
func appendStream(dst []byte, st *StreamSnapshot, v1, v2 []float64) []byte {
	dst = appendString(dst, st.Name)
	dst = binary.AppendUvarint(dst, st.Count)
	dst = binary.AppendUvarint(dst, st.Anomalies)
	dst = binary.AppendUvarint(dst, st.Anomalous)
	dst = binary.AppendVarint(dst, st.UpdatedTS)
	dst = binary.AppendUvarint(dst, uint64(st.Quiet))
	dst = binary.AppendUvarint(dst, uint64(st.Sums.Age))
	w := &st.Sums
	for _, f := range [...]float64{st.Last, st.LastZ, st.EWMean, st.EWVar, st.Step, st.AlertZ, w.Ref, w.S1, w.S2, w.Mag1, w.Mag2} {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(f))
	}
	dst = binary.AppendUvarint(dst, uint64(len(v1)+len(v2)))
	for _, v := range v1 {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
	}
	for _, v := range v2 {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
	}
	if st.Ranges == nil {
		dst = append(dst, 0)
	} else {
		dst = st.Ranges.AppendBinary(append(dst, 1))
	}
	return binary.AppendVarint(dst, st.CoolUntil)
}

// appendHistory encodes anomalies, oldest first, given as h1 then h2, so
// a ring can be written in order without copying it first.
func appendHistory(dst []byte, h1, h2 []Anomaly) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(h1)+len(h2)))
	for _, h := range [2][]Anomaly{h1, h2} {
		for i := range h {
			a := &h[i]
			dst = appendString(dst, a.Metric)
			dst = binary.AppendVarint(dst, a.TS)
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(a.Value))
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(a.Mean))
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(a.Stddev))
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(a.Z))
			dst = append(dst, byte(a.Reason))
		}
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// ErrCorrupt wraps every error of DecodeSnapshot but ErrNewerVersion.
var ErrCorrupt = errors.New("corrupt snapshot")

// ErrNewerVersion means the snapshot was written by a newer version of the
// service: not garbage, and not to be written over (rolling a deploy back
// must not destroy what the newer version saved). Every version after 1
// starts with its version byte (2 to 127), newerMagic and the device ID,
// so DecodeSnapshot returns the ID with this error, for the caller to
// check; without the magic, a first byte and a short ID were enough for
// garbage to pass as a newer snapshot and never be replaced.
var ErrNewerVersion = errors.New("snapshot written by a newer version")

// newerMagic follows the version byte of every version after 1.
const newerMagic = "aisv"

// HeaderGen reads the Gen in the header of an encoded snapshot whatever
// follows it (false for version 1, or when the header itself is cut):
// the Gen a store's fencing compares, which a corrupt snapshot's device
// must continue from for its next snapshot to replace it.
func HeaderGen(b []byte) (uint64, bool) {
	if len(b) < 1+len(newerMagic) || b[0] < 2 || b[0] > snapshotVersion || string(b[1:1+len(newerMagic)]) != newerMagic {
		return 0, false
	}
	d := decoder{b: b[1+len(newerMagic):]}
	d.string()
	if d.err != nil || len(d.b) < 8 {
		return 0, false
	}
	g := binary.BigEndian.Uint64(d.b)
	return g, g <= MaxGen
}

// MaxGen is the largest Gen a snapshot may have: one per snapshot of a
// device, it never comes near; beyond it a Gen is garbage, which fencing
// (a Redis script, with Lua's doubles) must not compare: 2^53 and 2^53+1
// are the same double.
const MaxGen = 1<<52 - 1

// DecodeSnapshot parses an encoding made by AppendBinary. It rejects a
// wrong version, truncation, trailing bytes, non-minimal varints, absurd
// lengths, and values that no stream fed valid samples can hold (NaN, Inf,
// beyond MaxValue, negative variances) with an error wrapping ErrCorrupt.
func DecodeSnapshot(b []byte) (*Snapshot, error) {
	d := decoder{b: b}
	v := d.byte()
	magic := len(d.b) >= len(newerMagic) && string(d.b[:len(newerMagic)]) == newerMagic
	switch {
	case d.err != nil:
	case v == 1:
	case v > 1 && v < 128 && magic:
		d.b = d.b[len(newerMagic):]
		if id := d.string(); d.err == nil && v > snapshotVersion {
			return &Snapshot{Device: id}, fmt.Errorf("%w: version %d, this one reads %d", ErrNewerVersion, v, snapshotVersion)
		}
		d.b = b[1+len(newerMagic):]
	default:
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, v, snapshotVersion)
	}
	s := &Snapshot{Device: d.string()}
	if v >= 2 && d.err == nil {
		if len(d.b) < 8 {
			return nil, fmt.Errorf("%w: truncated in the generation", ErrCorrupt)
		}
		s.Gen = binary.BigEndian.Uint64(d.b)
		d.b = d.b[8:]
		if s.Gen > MaxGen {
			return nil, fmt.Errorf("%w: generation %d beyond %d", ErrCorrupt, s.Gen, uint64(MaxGen))
		}
	}
	n := d.count(len(d.b) / minStreamBytes)
	if d.err == nil {
		s.Streams = make([]StreamSnapshot, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		st := &s.Streams[i]
		st.Name = d.string()
		st.Count, st.Anomalies, st.Anomalous = d.uvarint(), d.uvarint(), d.uvarint()
		st.UpdatedTS = d.varint()
		st.Quiet = int32(d.count(math.MaxInt32))
		st.Sums.Age = int32(d.count(math.MaxInt32))
		// A NaN or infinite scalar would silence the stream for good (a
		// NaN step makes every z NaN), so each is checked against what a
		// stream can hold.
		st.Last = d.float(-maxStored, maxStored)
		st.LastZ = d.float(-math.MaxFloat64, math.MaxFloat64)
		st.EWMean = d.float(-maxStored, maxStored)
		st.EWVar = d.float(0, maxDev*maxDev)
		st.Step = d.float(0, maxDev)
		st.AlertZ = d.float(0, math.MaxFloat64)
		w := &st.Sums
		w.Ref = d.float(-maxStored, maxStored)
		w.S1 = d.float(-maxMag, maxMag)
		w.S2 = d.float(-maxMag2, maxMag2) // rounding can leave it just below 0
		w.Mag1 = d.float(0, maxMag)
		w.Mag2 = d.float(0, maxMag2)
		nv := d.count(min(detect.MaxWindow, len(d.b)/8))
		if d.err == nil {
			st.Values = make([]float64, nv)
		}
		for j := 0; j < nv && d.err == nil; j++ {
			st.Values[j] = d.float(-maxStored, maxStored)
		}
		// The sums describe these values: n deviations of at most maxDev
		// each, with room to spare for rounding. Sums far beyond that
		// would put a mean outside every value.
		n := float64(nv)
		if d.err == nil && !(math.Abs(w.S1) <= 2*n*maxDev && math.Abs(w.S2) <= 2*n*maxDev*maxDev) {
			d.fail("window sums do not fit its values")
		}
		if v >= 3 && d.err == nil {
			switch d.byte() {
			case 0:
			case 1:
				size := detect.RangeStateSize
				if v == 3 {
					size = detect.RangeStateSizeV1
				}
				if len(d.b) < size {
					d.fail("truncated in the ranges detector's state")
					break
				}
				st.Ranges = new(detect.RangeState)
				if err := st.Ranges.UnmarshalBinary(d.b[:size]); err != nil {
					d.fail(err.Error()) // drops the bytes left
					break
				}
				d.b = d.b[size:]
			default:
				d.fail("bad ranges detector flag")
			}
		}
		if v >= 4 && d.err == nil {
			st.CoolUntil = d.varint()
		}
	}
	nh := d.count(len(d.b) / minAlertBytes)
	if d.err == nil {
		s.History = make([]Anomaly, nh)
	}
	for i := 0; i < nh && d.err == nil; i++ {
		a := &s.History[i]
		a.Device = s.Device
		a.Metric = d.string()
		a.TS = d.varint()
		a.Value = d.float(-maxStored, maxStored)
		a.Mean = d.float(-maxStored, maxStored)
		a.Stddev = d.float(0, math.MaxFloat64)
		a.Z = d.float(-math.MaxFloat64, math.MaxFloat64)
		if v >= 4 && d.err == nil {
			if a.Reason = detect.Reason(d.byte()); !a.Reason.Valid() {
				d.fail(fmt.Sprintf("bad alert reason %d", a.Reason))
			}
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return nil, d.err
	}
	return s, nil
}

// decoder reads fields in order and keeps the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 { return readVarint(d, binary.Uvarint, binary.AppendUvarint) }

func (d *decoder) varint() int64 { return readVarint(d, binary.Varint, binary.AppendVarint) }

// readVarint also refuses a varint longer than its minimal form, which
// binary.Uvarint accepts, so that what decodes re-encodes to the same bytes.
func readVarint[T uint64 | int64](d *decoder, read func([]byte) (T, int), write func([]byte, T) []byte) T {
	v, n := read(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	var tmp [binary.MaxVarintLen64]byte
	if len(write(tmp[:0], v)) != n {
		d.fail("varint not in minimal form")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) count(limit int) int {
	v := d.uvarint()
	if v > uint64(limit) {
		d.fail(fmt.Sprintf("length %d over %d", v, limit))
		return 0
	}
	return int(v)
}

func (d *decoder) string() string {
	n := d.count(len(d.b))
	if len(d.b) < n {
		d.fail("truncated")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// float reads a float64 that must lie in [lo, hi]; NaN never does.
func (d *decoder) float(lo, hi float64) float64 {
	if len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	if !(f >= lo && f <= hi) {
		d.fail(fmt.Sprintf("value %g outside [%g, %g]", f, lo, hi))
		return 0
	}
	return f
}
