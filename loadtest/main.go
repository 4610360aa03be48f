// Command loadtest is an open-model load generator for ai-load-service:
// request i is due at start + i/rate whatever earlier ones do, and its
// latency is measured from that due time, so queueing in the service (or
// here) cannot hide behind slow responses (no coordinated omission).
//
// Like k6's constant-arrival-rate executor, it keeps at most -connections
// requests in flight: a request that falls due while all of them are busy
// is dropped and counted, not queued, so a stalled service cannot stretch
// the run. Sending stops at -duration; requests still unanswered -grace
// later are cut off and counted as "interrupted" errors. Requests go out
// on time (see pacer), and the send lag (when a request went out minus
// when it was due) is reported on its own, so a late generator is not
// mistaken for a slow service. Percentiles are nearest-rank.
//
//	go run ./loadtest -url http://127.0.0.1:8080 -rate 5000 -duration 30s
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// config is the command line.
type config struct {
	URL          string
	Rate         float64
	Duration     time.Duration
	Grace        time.Duration // wait for requests in flight after Duration; zero: none
	Devices      int
	Batch        int
	Metrics      int
	SpikeRate    float64
	Route        string
	Connections  int
	JSON         string
	Token        string
	P95          time.Duration
	MaxErrorRate float64
	Quiet        bool
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.URL, "url", "http://127.0.0.1:8080", "service base URL")
	fs.Float64Var(&c.Rate, "rate", 1000, "requests per second; request i is due at start + i/rate (open model)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to send")
	fs.DurationVar(&c.Grace, "grace", 5*time.Second, "after -duration, how long to wait for requests in flight;\nthose still unanswered then count as errors (interrupted)")
	fs.IntVar(&c.Devices, "devices", 10000, "distinct device IDs")
	fs.IntVar(&c.Batch, "batch", 1, "samples per request (ingest route)")
	fs.IntVar(&c.Metrics, "metrics", 2, "metrics per sample")
	fs.Float64Var(&c.SpikeRate, "spike-rate", 0.001, "share of samples with an injected spike")
	fs.StringVar(&c.Route, "route", "ingest", "ingest (POST /api/v1/ingest) or metric (the prototype's POST /metric)")
	fs.IntVar(&c.Connections, "connections", 64, "concurrent connections: at most this many requests in flight;\na request due while all are busy is dropped (counted, not queued)")
	fs.StringVar(&c.JSON, "json", "", "also write the summary as JSON to this file")
	fs.StringVar(&c.Token, "token", "", "bearer token sent as Authorization")
	fs.DurationVar(&c.P95, "p95", 500*time.Millisecond, "fail (exit 1) when p95 latency is above this")
	fs.Float64Var(&c.MaxErrorRate, "max-error-rate", 0.01, "fail (exit 1) when (errors + dropped) / scheduled is above this")
	fs.BoolVar(&c.Quiet, "quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case c.Rate <= 0 || c.Rate > 1e7:
		return c, errors.New("-rate must be in (0, 1e7]")
	case c.Duration <= 0:
		return c, errors.New("-duration must be positive")
	case c.Grace < 0:
		return c, errors.New("-grace must not be negative")
	case c.Devices < 1 || c.Batch < 1 || c.Metrics < 1 || c.Metrics > 64 || c.Connections < 1:
		return c, errors.New("-devices, -batch, -connections must be >= 1 and -metrics 1-64")
	case c.Route != "ingest" && c.Route != "metric":
		return c, fmt.Errorf("-route %q: want ingest or metric", c.Route)
	case c.SpikeRate < 0 || c.SpikeRate > 1:
		return c, errors.New("-spike-rate must be in [0, 1]")
	}
	return c, nil
}

// Summary is what a run measured; its JSON keys are part of the interface.
// Every scheduled request is either sent (Requests) or dropped, and every
// sent one is either OK or an error, interrupted ones included.
type Summary struct {
	Scheduled        uint64            `json:"scheduled"`
	Requests         uint64            `json:"requests"` // sent
	Dropped          uint64            `json:"dropped"`  // due while -connections were all busy
	OK               uint64            `json:"ok"`
	RPS              float64           `json:"rps"`
	SamplesPerSecond float64           `json:"samples_per_second"`
	Errors           uint64            `json:"errors"`
	ErrorsByStatus   map[string]uint64 `json:"errors_by_status"`
	ErrorRate        float64           `json:"error_rate"` // (errors + dropped) / scheduled
	LatencyMS        Latency           `json:"latency_ms"`
	SendLagMS        SendLag           `json:"send_lag_ms"`
	SpikesInjected   uint64            `json:"spikes_injected"`
	SpikesDetected   uint64            `json:"spikes_detected"`
	OtherAnomalies   uint64            `json:"anomalies_on_other_samples"`
	Late             uint64            `json:"sent_late"` // send lag above one interval
	Seconds          float64           `json:"seconds"`
}

// Latency percentiles in milliseconds.
type Latency struct {
	Min float64 `json:"min"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// SendLag percentiles in milliseconds: when requests went out, minus when
// they were due. It is the generator's own lateness, and it is part of
// every latency.
type SendLag struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// run sends the load and returns what it measured. It returns by
// c.Duration + c.Grace (plus the time to dial or close a connection).
func run(c config, progress io.Writer) Summary {
	// LIFO: the connection used last is the one least likely to have been
	// closed by the service as idle meanwhile (with FIFO, the oldest idle
	// one was taken first, and a closed one cost a request a "network"
	// error).
	client := &fasthttp.Client{MaxConnsPerHost: c.Connections, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ConnPoolStrategy: fasthttp.LIFO}
	defer client.CloseIdleConnections()
	path := "/api/v1/ingest"
	if c.Route == "metric" {
		path = "/metric"
	}
	url := strings.TrimRight(c.URL, "/") + path
	interval := time.Duration(float64(time.Second) / c.Rate)
	// Request i is due at i/rate, from 0: those due before the end are
	// ceil(rate × duration) (rounding down scheduled none at -rate 1
	// -duration 500ms).
	total := uint64(math.Ceil(c.Rate*c.Duration.Seconds() - 1e-9))

	var (
		sent, ok, errs, late     atomic.Uint64
		dropped                  atomic.Uint64
		spikes, detected, others atomic.Uint64
		hist, lag                histogram
		statusMu                 sync.Mutex
		byStatus                 = map[string]uint64{}              // guarded by statusMu
		seen                     = make([]atomic.Uint32, c.Devices) // samples sent per device
		// inflight counts requests handed to workers and not yet answered.
		// Only the scheduler adds, so its check-then-add cannot overshoot.
		inflight atomic.Int64
	)
	start := time.Now()
	cutoff := start.Add(c.Duration + c.Grace) // no request outlives this
	done := make(chan struct{})
	if !c.Quiet {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			var last uint64
			for {
				select {
				case <-done:
					return
				case <-t.C:
					n := sent.Load()
					fmt.Fprintf(progress, "%5.0fs sent %d ok %d errors %d in flight %d dropped %d rps %d p99 %.2fms send lag p99 %.2fms\n",
						time.Since(start).Seconds(), n, ok.Load(), errs.Load(), inflight.Load(), dropped.Load(), n-last,
						hist.quantile(0.99)/1000, lag.quantile(0.99)/1000)
					last = n
				}
			}
		}()
	}
	// The channel never blocks the scheduler: it holds at most inflight
	// entries, and inflight stays at or below its capacity.
	work := make(chan time.Time, c.Connections)
	var wg sync.WaitGroup
	for w := range c.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body []byte
			var spiked []string // "device\x00metric" of injected spikes
			for at := range work {
				body, spiked = buildBody(body[:0], spiked[:0], c, rng, seen, at)
				req.Reset()
				req.SetRequestURI(url)
				req.Header.SetMethod(fasthttp.MethodPost)
				req.Header.SetContentType("application/json")
				if c.Token != "" {
					req.Header.Set("Authorization", "Bearer "+c.Token)
				}
				req.SetBodyRaw(body)
				for time.Now().Before(at) { // at most lead: see the scheduler
				}
				l := time.Since(at)
				lag.record(l)
				if l > interval {
					late.Add(1)
				}
				sent.Add(1)
				err := client.DoDeadline(req, resp, cutoff)
				end := time.Now()
				inflight.Add(-1)
				status := ""
				switch {
				case err == nil && resp.StatusCode() == 200:
				case err == nil:
					status = strconv.Itoa(resp.StatusCode())
				case errors.Is(err, fasthttp.ErrTimeout) && !end.Before(cutoff):
					status = "interrupted"
				case errors.Is(err, fasthttp.ErrTimeout):
					status = "timeout"
				default:
					status = "network"
				}
				// An interrupted request's latency is unknown, not the
				// time it was cut off; it counts as an error instead.
				if status != "interrupted" {
					hist.record(end.Sub(at))
				}
				if status != "" {
					errs.Add(1)
					statusMu.Lock()
					byStatus[status]++
					statusMu.Unlock()
					continue
				}
				ok.Add(1)
				spikes.Add(uint64(len(spiked)))
				hit, other := matchAnomalies(resp.Body(), spiked)
				detected.Add(uint64(hit))
				others.Add(uint64(other))
			}
		}()
	}
	// The scheduler wakes lead before a due time and hands the request to
	// a worker, which builds it and spins until it is due, so neither the
	// pacer's wake-up lateness nor the hand-off delays the send. lead
	// follows that lateness; capped at a quarter interval, the spinning
	// takes under a quarter of a core.
	p := newPacer()
	defer p.close()
	var wakeLate time.Duration // moving average
	maxLead := min(interval/4, 2*time.Millisecond)
	sendEnd := start.Add(c.Duration)
	for i := range total {
		if time.Now().After(sendEnd) {
			// Behind schedule at the end (the generator short of CPU):
			// sending stops at -duration, and what is left was not sent
			// on time. (Sent anyway, it met a cutoff already past and
			// counted as sent and interrupted without leaving.)
			dropped.Add(total - i)
			break
		}
		at := start.Add(time.Duration(float64(i) * float64(time.Second) / c.Rate))
		wake := at.Add(-min(2*wakeLate+20*time.Microsecond, maxLead))
		p.wait(wake)
		wakeLate += (min(time.Since(wake), maxLead) - wakeLate) / 16
		if inflight.Load() >= int64(c.Connections) {
			// Dropped only if still busy when due.
			p.wait(at)
			if inflight.Load() >= int64(c.Connections) {
				dropped.Add(1)
				continue
			}
		}
		inflight.Add(1)
		work <- at
	}
	close(work)
	wg.Wait()
	close(done)
	// Rates are over the run's length, at least -duration: a run whose
	// few requests were answered at once reported 1,791 req/s at -rate 0.3.
	secs := max(time.Since(start), c.Duration).Seconds()
	n := sent.Load()
	samples := float64(ok.Load())
	if c.Route == "ingest" {
		samples *= float64(c.Batch)
	}
	ms := func(h *histogram, q float64) float64 { return h.quantile(q) / 1000 }
	s := Summary{
		Scheduled: total, Requests: n, Dropped: dropped.Load(), OK: ok.Load(),
		RPS: float64(n) / secs, SamplesPerSecond: samples / secs,
		Errors: errs.Load(), ErrorsByStatus: byStatus,
		LatencyMS: Latency{Min: ms(&hist, 0), P50: ms(&hist, 0.5), P90: ms(&hist, 0.9), P95: ms(&hist, 0.95),
			P99: ms(&hist, 0.99), Max: ms(&hist, 1)},
		SendLagMS:      SendLag{P50: ms(&lag, 0.5), P90: ms(&lag, 0.9), P99: ms(&lag, 0.99), Max: ms(&lag, 1)},
		SpikesInjected: spikes.Load(), SpikesDetected: detected.Load(), OtherAnomalies: others.Load(),
		Late: late.Load(), Seconds: secs,
	}
	s.ErrorRate = errorRate(s)
	return s
}

// warmSamples is how many samples a device gets before spikes are injected
// into it: the detector needs history (MIN_SAMPLES) to call anything.
const warmSamples = 20

// buildBody writes one request body, due at at, and lists the spikes it
// injects.
func buildBody(b []byte, spiked []string, c config, rng *rand.Rand, seen []atomic.Uint32, at time.Time) ([]byte, []string) {
	if c.Route == "metric" {
		b = append(b, `{"rps":`...)
		b = strconv.AppendFloat(b, rng.Float64()*200, 'f', 3, 64)
		b = append(b, `,"cpu":`...)
		b = strconv.AppendFloat(b, rng.Float64()*100, 'f', 3, 64)
		b = append(b, `,"timestamp":`...)
		b = strconv.AppendInt(b, at.UnixMilli(), 10)
		return append(b, '}'), spiked
	}
	if c.Batch > 1 {
		b = append(b, '[')
	}
	for s := range c.Batch {
		if s > 0 {
			b = append(b, ',')
		}
		d := rng.IntN(c.Devices)
		warm := seen[d].Add(1) > warmSamples
		b = append(b, `{"device":"sensor-`...)
		b = strconv.AppendInt(b, int64(d), 10)
		b = append(b, `","metrics":{`...)
		for m := range c.Metrics {
			if m > 0 {
				b = append(b, ',')
			}
			b = append(b, `"m`...)
			b = strconv.AppendInt(b, int64(m), 10)
			b = append(b, `":`...)
			v := float64(20+d%17+m) + rng.Float64() - 0.5
			if warm && rng.Float64() < c.SpikeRate {
				v += 100
				spiked = append(spiked, "sensor-"+strconv.Itoa(d)+"\x00m"+strconv.Itoa(m))
			}
			b = strconv.AppendFloat(b, v, 'f', 3, 64)
		}
		b = append(b, "}}"...)
	}
	if c.Batch > 1 {
		b = append(b, ']')
	}
	return b, spiked
}

// matchAnomalies counts the injected spikes the response reports and the
// anomalies it reports elsewhere.
func matchAnomalies(body []byte, spiked []string) (hit, other int) {
	i := bytes.Index(body, []byte(`"anomalies":[`))
	if i < 0 || bytes.HasPrefix(body[i+len(`"anomalies":[`):], []byte("]")) {
		return 0, 0
	}
	var r struct {
		Anomalies []struct{ Device, Metric string } `json:"anomalies"`
	}
	if json.Unmarshal(body, &r) != nil {
		return 0, 0
	}
	for _, a := range r.Anomalies {
		key := a.Device + "\x00" + a.Metric
		found := false
		for k, s := range spiked {
			if s == key {
				found = true
				spiked[k] = "" // count each spike once
				break
			}
		}
		if found {
			hit++
		} else {
			other++
		}
	}
	return hit, other
}

// histogram records latencies in microseconds with log-linear buckets of
// about 3% width (32 sub-buckets per power of two), like an HDR histogram
// with two significant digits; safe for concurrent use.
type histogram struct {
	counts [48 * 32]atomic.Uint64
	min    atomic.Uint64 // µs + 1; zero means none yet
	max    atomic.Uint64 // µs
}

func bucketOf(us uint64) int {
	if us < 32 {
		return int(us)
	}
	e := 63 - leadingZeros(us) // position of the top bit, >= 5
	return (e-4)*32 + int(us>>(e-5)&31)
}

func bucketLow(b int) uint64 {
	if b < 32 {
		return uint64(b)
	}
	e := b/32 + 4
	return (32 + uint64(b%32)) << (e - 5)
}

func leadingZeros(x uint64) int {
	n := 0
	for x&(1<<63) == 0 {
		x <<= 1
		n++
	}
	return n
}

func (h *histogram) record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	b := min(bucketOf(us), len(h.counts)-1)
	h.counts[b].Add(1)
	for {
		m := h.min.Load()
		if m != 0 && m <= us+1 || h.min.CompareAndSwap(m, us+1) {
			break
		}
	}
	for {
		m := h.max.Load()
		if m >= us || h.max.CompareAndSwap(m, us) {
			break
		}
	}
}

// quantile returns the nearest-rank q-quantile in microseconds: the upper
// edge of the bucket holding the ceil(q*N)-th smallest value, capped at the
// maximum. It is never below the exact value and at most one bucket width
// (~3%) above it. q = 0 and 1 give the exact min and max.
func (h *histogram) quantile(q float64) float64 {
	if q <= 0 {
		return float64(max(h.min.Load(), 1) - 1)
	}
	if q >= 1 {
		return float64(h.max.Load())
	}
	var total uint64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	// The epsilon keeps float error from raising an exact rank:
	// 0.07*100 is 7.000000000000001.
	rank := max(uint64(math.Ceil(q*float64(total)-1e-9)), 1)
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if cum >= rank {
			return float64(min(bucketLow(i+1)-1, h.max.Load()))
		}
	}
	return float64(h.max.Load())
}

func printSummary(w io.Writer, c config, s Summary) {
	fmt.Fprintf(w, "\n  route.......................: %s (%s, batch %d, %d metrics)\n", c.Route, c.URL, c.Batch, c.Metrics)
	fmt.Fprintf(w, "  requests....................: %d   %.1f/s (target %g/s)\n", s.Requests, s.RPS, c.Rate)
	fmt.Fprintf(w, "  scheduled...................: %d (%d sent, %d dropped: due while all %d connections were busy)\n",
		s.Scheduled, s.Requests, s.Dropped, c.Connections)
	fmt.Fprintf(w, "  samples.....................: %.1f/s\n", s.SamplesPerSecond)
	fmt.Fprintf(w, "  send lag (generator)........: p50=%.3fms p90=%.3fms p99=%.3fms max=%.3fms (%d sent over one interval late)\n",
		s.SendLagMS.P50, s.SendLagMS.P90, s.SendLagMS.P99, s.SendLagMS.Max, s.Late)
	fmt.Fprintf(w, "  latency from schedule.......: min=%.3fms p50=%.3fms p90=%.3fms p95=%.3fms p99=%.3fms max=%.3fms\n",
		s.LatencyMS.Min, s.LatencyMS.P50, s.LatencyMS.P90, s.LatencyMS.P95, s.LatencyMS.P99, s.LatencyMS.Max)
	fmt.Fprintf(w, "  errors......................: %d", s.Errors)
	keys := make([]string, 0, len(s.ErrorsByStatus))
	for k := range s.ErrorsByStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, " %s=%d", k, s.ErrorsByStatus[k])
	}
	fmt.Fprintf(w, "; with dropped, %.3f%% of scheduled\n", 100*s.ErrorRate)
	if c.Route == "ingest" {
		recall := 0.0
		if s.SpikesInjected > 0 {
			recall = float64(s.SpikesDetected) / float64(s.SpikesInjected)
		}
		fmt.Fprintf(w, "  spikes detected.............: %d of %d (recall %.3f)\n", s.SpikesDetected, s.SpikesInjected, recall)
		fmt.Fprintf(w, "  anomalies on other samples..: %d\n", s.OtherAnomalies)
	}
}

// errorRate counts dropped requests as failures: they were due while the
// service held every connection, and leaving them out would let a stalled
// service pass the threshold on the few requests it did answer.
func errorRate(s Summary) float64 {
	if s.Requests+s.Dropped == 0 {
		return 0
	}
	return float64(s.Errors+s.Dropped) / float64(s.Requests+s.Dropped)
}

// thresholds returns the crossed thresholds, like k6's.
func thresholds(c config, s Summary) []string {
	var out []string
	if p95 := time.Duration(s.LatencyMS.P95 * float64(time.Millisecond)); p95 > c.P95 {
		out = append(out, fmt.Sprintf("p95 latency %s > %s", p95.Round(time.Microsecond), c.P95))
	}
	if r := errorRate(s); r > c.MaxErrorRate {
		out = append(out, fmt.Sprintf("error rate (errors + dropped) / scheduled %.4f > %g", r, c.MaxErrorRate))
	}
	return out
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	s := run(c, os.Stderr)
	printSummary(os.Stdout, c, s)
	if c.JSON != "" {
		b, _ := json.MarshalIndent(s, "", "  ")
		if err := os.WriteFile(c.JSON, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			os.Exit(2)
		}
	}
	if crossed := thresholds(c, s); len(crossed) > 0 {
		for _, t := range crossed {
			fmt.Fprintln(os.Stderr, "threshold crossed:", t)
		}
		os.Exit(1)
	}
}
