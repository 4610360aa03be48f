// Package detect is the detectors' math as a library, with no goroutines
// and no devices: Window, a ring with an exact O(1) rolling mean and
// stddev; Stream, which scores each value of one series against the values
// before it with one of the detectors (Kind); Params and the per-metric
// Rules that configure them; and a scorer for the Numenta Anomaly
// Benchmark (nab.go). Its tests evaluate the detectors on a labelled
// synthetic corpus (make eval). Package shard owns the streams, each in
// one shard goroutine, and persists them through Window.Sums and Load and
// Stream.State and SetState.
package detect

import (
	"fmt"
	"math"
)

// Kind selects a detector. Every kind scores a sample against state built
// from the samples before it, so a value never dilutes its own score.
type Kind uint8

const (
	// ZScore is the exact rolling z-score over the last W values.
	ZScore Kind = iota + 1
	// Winsor is the rolling z-score over a window whose values are clipped
	// to mean ± Threshold·stddev as they enter, so outliers cannot inflate
	// the stddev that should reveal the next ones.
	Winsor
	// EWMA scores against an exponentially weighted mean and variance
	// (alpha = 2/(W+1)) updated with the same clipped values.
	EWMA
	// Ranges alerts when a stream leaves the ranges it has kept (value,
	// mean, volatility, daily profile), or on Winsor's z-score while such
	// alerts are rare for the stream: see RangeState. Threshold, Cooldown
	// and StepFloor apply to its z-score channel.
	Ranges
)

var kindNames = [...]string{0: "default", ZScore: "zscore", Winsor: "winsor", EWMA: "ewma", Ranges: "ranges"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// ParseKind returns the Kind named s.
func ParseKind(s string) (Kind, error) {
	for k, name := range kindNames {
		if s == name && k > 0 {
			return Kind(k), nil
		}
	}
	return 0, fmt.Errorf("unknown detector %q; want zscore, winsor, ewma or ranges", s)
}

// The long-run step scale behind Params.StepFloor.
const (
	stepMemory = 1000 // samples it averages over, about
	stepClip   = 10   // largest change it takes in, in current steps
	stepCap    = 100  // largest step scale, in the window's stddevs
)

// MinMinStddev is the smallest MinStddev: values differ by at most
// 2·shard.MaxValue, so z stays below 2e300, finite (a smaller floor let z
// overflow to +Inf, which a snapshot cannot hold).
const MinMinStddev = 1e-150

// escalation is how much larger |z| must be than at the last alert for a
// new alert to break through the cooldown.
const escalation = 2

// Default settings, chosen from the labelled evaluation (see README, make
// eval); package shard fills its Options' zero fields with them.
const (
	DefaultKind      = Ranges
	DefaultThreshold = 5
	DefaultCooldown  = 50
	DefaultStepFloor = 0.5
)

// Params are one detector's settings.
type Params struct {
	Kind       Kind
	Window     int     // values kept per stream; for EWMA also alpha = 2/(Window+1)
	MinSamples int     // samples needed before a sample can be anomalous
	Threshold  float64 // |z| at or above it is anomalous
	MinStddev  float64 // floor under the stddev so a constant window gives a finite z
	// Cooldown is how many samples after an alert the stream raises no new
	// alert unless |z| reaches escalation × the |z| of that alert.
	Cooldown int
	// StepFloor, when positive, floors the stddev at StepFloor × the
	// stream's long-run mean absolute change between samples, so a window
	// that happens to be flat (a quantised or stuck signal) does not turn
	// the next ordinary step into a huge z. ZScore ignores it: it stays the
	// exact core test.
	StepFloor float64
	// CooldownMs, when positive, is a cooldown in time beside Cooldown's
	// in samples: for CooldownMs of ts after an alert the stream raises no
	// new alert, unless |z| reaches escalation × the |z| of that alert.
	CooldownMs int64
}

// MaxCooldownMs is the largest Params.CooldownMs: a year.
const MaxCooldownMs = 366 * 24 * 3600 * 1000

// Validate reports settings that cannot work.
func (p *Params) Validate() error {
	switch {
	case p.Kind == 0 || int(p.Kind) >= len(kindNames):
		return fmt.Errorf("unknown detector %d", p.Kind)
	case p.Window < 2 || p.Window > MaxWindow:
		return fmt.Errorf("window=%d: want 2 to %d", p.Window, MaxWindow)
	case p.MinSamples < 1 || p.MinSamples > p.Window && p.Kind != EWMA:
		return fmt.Errorf("min_samples=%d: want 1 to window=%d", p.MinSamples, p.Window)
	case !(p.Threshold > 0) || math.IsInf(p.Threshold, 0):
		return fmt.Errorf("threshold=%g: want a positive number", p.Threshold)
	case !(p.MinStddev >= MinMinStddev) || math.IsInf(p.MinStddev, 0):
		return fmt.Errorf("min_stddev=%g: want a number from %g", p.MinStddev, MinMinStddev)
	case p.Cooldown < 0 || p.Cooldown > 1000000:
		return fmt.Errorf("cooldown=%d: want 0 to 1000000", p.Cooldown)
	case !(p.StepFloor >= 0) || p.StepFloor > 100:
		return fmt.Errorf("step_floor=%g: want 0 to 100", p.StepFloor)
	case p.CooldownMs < 0 || p.CooldownMs > MaxCooldownMs:
		return fmt.Errorf("cooldown=%dms: want 0 to %dms (a year)", p.CooldownMs, int64(MaxCooldownMs))
	}
	return nil
}

// Score is the verdict on one sample.
type Score struct {
	// Z = (x - Mean) / Stddev: Mean and Stddev are what x was scored
	// against, Stddev after the MinStddev and StepFloor floors (so a flat
	// window reports the floor it was scored with, not 0).
	Z, Mean, Stddev float64
	Anomalous       bool // |z| >= Threshold with enough history, or (Ranges) an alert
	Alert           bool // anomalous and not held back by the cooldown
	Reason          Reason
}

// Stream is the state of one (device, metric) series.
type Stream struct {
	// Fields every sample touches come first, so that a stream's hot state
	// spans as few cache lines as possible; a shard's streams are mostly
	// cache misses under a large fleet.
	Win       Window
	Count     uint64  // samples seen since the stream was created
	Last      float64 // last value
	LastZ     float64 // z of the last value
	UpdatedTS int64   // ts of the last value, unix ms
	step      float64 // long-run mean |x - previous x|
	quiet     int32   // samples left in the cooldown
	coolUntil int64   // ts before which the time cooldown holds alerts back; 0: none

	Anomalies     uint64      // alerts raised since the stream was created
	Anomalous     uint64      // anomalous samples, alerted or not
	alertZ        float64     // |z| of the last alert
	ewMean, ewVar float64     // EWMA state
	ranges        *RangeState // Ranges state, made on the first sample: other kinds do without its 704 bytes
}

// NewStream returns an empty stream with a window of size values.
func NewStream(size int) Stream { return Stream{Win: NewWindow(size)} }

// State is a Stream's detector state besides its window and its exported
// fields: what a snapshot saves so that a restored stream scores exactly
// what the original would have.
type State struct {
	Step          float64 // long-run mean |x - previous x|
	AlertZ        float64 // |z| of the last alert
	EWMean, EWVar float64 // EWMA state
	Quiet         int32   // samples left in the cooldown
	CoolUntil     int64   // ts before which the time cooldown holds alerts back; 0: none
	// Ranges is the Ranges detector's state, nil when the stream has none.
	// State returns the stream's own: encode it before the next sample.
	Ranges *RangeState
}

// State returns s's detector state, for snapshots.
func (s *Stream) State() State {
	return State{Step: s.step, AlertZ: s.alertZ, EWMean: s.ewMean, EWVar: s.ewVar, Quiet: s.quiet, CoolUntil: s.coolUntil, Ranges: s.ranges}
}

// SetState restores the detector state State returned.
func (s *Stream) SetState(st State) {
	s.ewMean, s.ewVar, s.step, s.quiet, s.alertZ, s.ranges = st.EWMean, st.EWVar, st.Step, st.Quiet, st.AlertZ, st.Ranges
	s.coolUntil = st.CoolUntil
}

// Observe scores x against the state built from earlier samples, then adds
// x to it.
func (s *Stream) Observe(x float64, ts int64, p *Params) Score {
	var mean, sd float64
	var n int
	if p.Kind == EWMA {
		mean, sd, n = s.ewMean, math.Sqrt(s.ewVar), int(min(s.Count, math.MaxInt32))
	} else {
		mean, sd = s.Win.Stats()
		n = s.Win.Len()
	}
	sdf := max(sd, p.MinStddev)
	if p.Kind != ZScore {
		if n >= p.MinSamples && sd > 0 {
			// A glitch among the first steps, before the step scale has
			// anything to clip against, would otherwise hold the floor
			// up for hundreds of thousands of samples.
			s.step = min(s.step, stepCap*sd)
		}
		sdf = max(sdf, p.StepFloor*s.step)
	}
	var z float64
	if n > 0 {
		z = (x - mean) / sdf
	}
	az := math.Abs(z)
	anomalous := n >= p.MinSamples && az >= p.Threshold
	held := p.CooldownMs > 0 && s.coolUntil != 0 && ts < s.coolUntil
	escalated := az >= escalation*s.alertZ
	alert := anomalous && (s.quiet == 0 && !held || escalated)
	switch {
	case alert:
		s.quiet, s.alertZ = int32(p.Cooldown), az
	case s.quiet > 0:
		s.quiet--
	}
	why := ReasonNone
	if alert {
		why = ReasonZ
	}
	zAnomalous := anomalous // what clips the value entering the window
	if p.Kind == Ranges {
		if s.ranges == nil {
			s.ranges = new(RangeState)
		}
		why = s.ranges.Decide(x, ts, alert)
		if held && !alert {
			// The time cooldown holds the range channels back too,
			// unless the z-score escalated (alert, though held): then
			// the alert stands, named by whichever channel fired.
			why = ReasonNone
		}
		if why != ReasonNone && why != ReasonZ {
			// What a z-score must reach to break through a cooldown
			// this alert starts: escalation × the threshold at least.
			s.alertZ = max(az, p.Threshold)
		}
		alert = why != ReasonNone
		anomalous = anomalous || alert
	}
	if alert {
		s.Anomalies++
		if p.CooldownMs > 0 {
			s.coolUntil = math.MaxInt64 // ts near the int64 limit must not wrap
			if ts <= math.MaxInt64-p.CooldownMs {
				s.coolUntil = ts + p.CooldownMs
			}
		}
	}
	if anomalous {
		s.Anomalous++
	}

	// What enters the state: x itself, or x clipped to the threshold band.
	in := x
	if p.Kind != ZScore && zAnomalous {
		// Only a value beyond the threshold band: a ranges alert with a
		// small |z| would otherwise enter farther out than it was.
		in = mean + math.Copysign(p.Threshold*sdf, z)
	}
	switch {
	case p.Kind == EWMA && s.Count == 0:
		s.ewMean = x
		s.Win.Push(x)
	case p.Kind == EWMA:
		a := 2 / (float64(p.Window) + 1)
		d := in - s.ewMean
		s.ewMean += a * d
		s.ewVar = (1 - a) * (s.ewVar + a*d*d)
		s.Win.Push(x)
	default:
		s.Win.Push(in)
	}
	s.advance(x, z, ts)
	return Score{Z: z, Mean: mean, Stddev: sdf, Anomalous: anomalous, Alert: alert, Reason: why}
}

// advance updates what every kind keeps after scoring x.
func (s *Stream) advance(x, z float64, ts int64) {
	if s.Count > 0 {
		// Warm up as a plain mean, then forget slowly; one huge jump moves
		// it by at most stepClip typical steps.
		d := math.Abs(x - s.Last)
		if s.step > 0 {
			d = min(d, stepClip*s.step)
		}
		s.step += (d - s.step) * recip(int(min(s.Count, stepMemory)))
	}
	s.Count++
	s.Last, s.LastZ, s.UpdatedTS = x, z, ts
}
