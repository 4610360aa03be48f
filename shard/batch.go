package shard

import "sync/atomic"

// Batch holds one request's samples in memory the caller reuses, so decoding
// and ingesting a batch allocates nothing in steady state. Names are copied
// into the batch's own buffer: a Batch never points into a request body.
//
// A Batch is used by one request at a time; Set.Ingest reads it from the
// shard goroutines only while the caller waits in Ingest.
type Batch struct {
	// Anomalies is filled by Set.Ingest with the anomalies the batch
	// produced, in sample order and, within a sample, in metric order.
	Anomalies []Anomaly
	// Anomalous is how many samples were anomalous, alerted or held back
	// by a stream's cooldown.
	Anomalous int
	// Head is the first metric of the first sample after Set.Ingest.
	Head StreamHead

	received int64  // unix ns the request arrived; zero: Ingest reads the clock
	buf      []byte // device and metric names back to back
	samples  []sample
	metrics  []metric

	moved   []Moved // samples not applied: their device was handed over
	applied int     // metric values applied

	// dispatch scratch, reused across requests
	counts []int32 // samples per shard
	order  []int32 // sample indices grouped by shard, batch order inside
	ops    []op
	done   latch
	// reserved is the room for new devices Ingest holds for the batch,
	// less what its shards took (see devlimit.go).
	reserved atomic.Int64
}

// StreamHead is what the prototype's /metric route reports of the window.
type StreamHead struct {
	Window int     // values in the window after the update
	Size   int     // the stream's window size W (a rule may set its own)
	Mean   float64 // the window's mean after the update
}

type span struct{ lo, hi int32 }

type sample struct {
	dev   span  // in buf
	ts    int64 // unix ms
	ms    span  // in metrics
	shard int32
	hash  uint64 // of the device ID, set by Set.Ingest
}

type metric struct {
	name span // in buf
	v    float64
}

// Reset empties b, keeping its memory.
func (b *Batch) Reset() {
	b.Anomalies = b.Anomalies[:0]
	b.Head = StreamHead{}
	b.received = 0
	b.buf = b.buf[:0]
	b.samples = b.samples[:0]
	b.metrics = b.metrics[:0]
	b.moved = b.moved[:0]
	b.applied = 0
}

// Moved lists, in batch order, the samples Ingest did not apply because
// their device had been handed over to another member (Set.HandOff): the
// rest of the batch was applied. Empty outside cluster mode.
func (b *Batch) Moved() []Moved { return b.moved }

// Applied returns how many metric values Ingest applied: Metrics, less
// those of the samples in Moved.
func (b *Batch) Applied() int { return b.applied }

// Received returns what SetReceived recorded (zero: nothing yet).
func (b *Batch) Received() int64 { return b.received }

// SetReceived records when the request arrived (unix ns): the devices it
// touches count as active from then, for idle eviction. Without it, Ingest
// reads the clock.
func (b *Batch) SetReceived(unixNano int64) { b.received = unixNano }

// Add starts a new sample for device at ts (unix milliseconds); the metrics
// added next with AddMetric belong to it.
func (b *Batch) Add(device []byte, ts int64) {
	b.Begin()
	b.SetSample(device, ts)
}

// Begin starts a new sample whose device and ts are set later with
// SetSample, for decoders that meet the metrics first.
func (b *Batch) Begin() {
	n := int32(len(b.metrics))
	b.samples = append(b.samples, sample{ms: span{n, n}})
}

// SetSample sets the device and ts of the sample started last.
func (b *Batch) SetSample(device []byte, ts int64) {
	s := &b.samples[len(b.samples)-1]
	s.dev, s.ts = b.keep(device), ts
}

// AddMetric adds a metric value to the sample started last by Add.
func (b *Batch) AddMetric(name []byte, v float64) {
	if len(b.samples) == 0 {
		panic("BUG: shard.Batch.AddMetric called before Add")
	}
	b.metrics = append(b.metrics, metric{name: b.keep(name), v: v})
	b.samples[len(b.samples)-1].ms.hi++
}

// Len returns the number of samples in b.
func (b *Batch) Len() int { return len(b.samples) }

// Metrics returns the number of metric values in b.
func (b *Batch) Metrics() int { return len(b.metrics) }

// Device returns sample i's device ID; the bytes are valid until Reset.
func (b *Batch) Device(i int) []byte { return b.bytes(b.samples[i].dev) }

// SampleMetrics returns how many metrics sample i has.
func (b *Batch) SampleMetrics(i int) int {
	s := b.samples[i].ms
	return int(s.hi - s.lo)
}

// MetricName returns the name of sample i's j-th metric.
func (b *Batch) MetricName(i, j int) []byte {
	return b.bytes(b.metrics[int(b.samples[i].ms.lo)+j].name)
}

func (b *Batch) keep(p []byte) span {
	lo := int32(len(b.buf))
	b.buf = append(b.buf, p...)
	return span{lo, int32(len(b.buf))}
}

func (b *Batch) bytes(s span) []byte { return b.buf[s.lo:s.hi] }

// TS returns sample i's timestamp in unix ms.
func (b *Batch) TS(i int) int64 { return b.samples[i].ts }

// Value returns the value of sample i's j-th metric.
func (b *Batch) Value(i, j int) float64 { return b.metrics[int(b.samples[i].ms.lo)+j].v }

// AppendSample copies sample i of src (device, ts and metrics) to the end
// of b: how a request is split by the pod that owns each device.
func (b *Batch) AppendSample(src *Batch, i int) {
	smp := &src.samples[i]
	b.Add(src.bytes(smp.dev), smp.ts)
	for j := smp.ms.lo; j < smp.ms.hi; j++ {
		m := &src.metrics[j]
		b.AddMetric(src.bytes(m.name), m.v)
	}
}

// Mark is a point in a Batch's growth that Rewind returns to.
type Mark struct{ samples, metrics, buf int }

// Mark returns the current end of b.
func (b *Batch) Mark() Mark { return Mark{len(b.samples), len(b.metrics), len(b.buf)} }

// Rewind drops everything added to b after m.
func (b *Batch) Rewind(m Mark) {
	b.samples, b.metrics, b.buf = b.samples[:m.samples], b.metrics[:m.metrics], b.buf[:m.buf]
}
