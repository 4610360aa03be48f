package shard

import "math"

// Params are the z-score detector's settings.
type Params struct {
	MinSamples int     // the window must hold this many values before a sample can be anomalous
	Threshold  float64 // |z| at or above it is an anomaly
	MinStddev  float64 // floor under the stddev so a constant window gives a finite z
}

// Score is the verdict on one sample against the window before it entered.
type Score struct {
	Z, Mean, Stddev float64
	Anomaly         bool
}

// Stream is the state of one (device, metric) series.
type Stream struct {
	Win       Window
	Count     uint64  // samples seen since the stream was created
	Anomalies uint64  // anomalous samples since the stream was created
	Last      float64 // last value
	LastZ     float64 // z of the last value
	UpdatedTS int64   // ts of the last value, unix ms
}

// NewStream returns an empty stream with a window of size values.
func NewStream(size int) Stream { return Stream{Win: NewWindow(size)} }

// Observe scores x against the window as it is, then adds x to it.
// The z-score uses the population stddev, floored at p.MinStddev.
func (s *Stream) Observe(x float64, ts int64, p *Params) Score {
	mean, sd := s.Win.Stats()
	var z float64
	if s.Win.Len() > 0 {
		z = (x - mean) / max(sd, p.MinStddev)
	}
	anomaly := s.Win.Len() >= p.MinSamples && math.Abs(z) >= p.Threshold
	s.Win.Push(x)
	s.Count++
	if anomaly {
		s.Anomalies++
	}
	s.Last, s.LastZ, s.UpdatedTS = x, z, ts
	return Score{Z: z, Mean: mean, Stddev: sd, Anomaly: anomaly}
}
