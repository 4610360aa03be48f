package server

import (
	"fmt"
	"io"
	"sort"

	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

const index = `ai-load-service: streaming anomaly detection for IoT device metrics

POST /api/v1/ingest                     one sample or an array: {"device":"sensor-42","ts":1732560000123,"metrics":{"temp":21.5}}
POST /metric                            prototype format: {"rps":123.4,"cpu":55.1,"timestamp":1732560000}
GET  /api/v1/devices/{device}           rolling stats per metric
GET  /api/v1/devices/{device}/anomalies recent anomalies, newest first
GET  /api/v1/cluster                    cluster membership as this pod sees it
GET  /analyze                           summary over all devices
GET  /health                            liveness
GET  /ready                             readiness (503 while starting or draining)
GET  /metrics                           Prometheus metrics
`

func (h *Handler) index(ctx *fasthttp.RequestCtx) error {
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(index)
	return nil
}

func (h *Handler) health(ctx *fasthttp.RequestCtx) error {
	ctx.SetContentType("application/json")
	ctx.SetBodyString(`{"status":"ok"}` + "\n")
	return nil
}

func (h *Handler) ready(ctx *fasthttp.RequestCtx) error {
	if h.fwd != nil && h.state.Load() == stateReady && !h.fwd.members.View().HasSelf() {
		return errorf(fasthttp.StatusServiceUnavailable, "not in the cluster's membership view yet (SELF_ADDR must be among the peers)")
	}
	switch h.state.Load() {
	case stateReady:
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ready"}` + "\n")
		return nil
	case stateDraining:
		return errorf(fasthttp.StatusServiceUnavailable, "draining: shutting down, send traffic to another replica")
	default:
		return errorf(fasthttp.StatusServiceUnavailable, "starting: not ready for traffic yet")
	}
}

// metrics serves Prometheus text: the handler's set, Go and process
// metrics, and per-metric-name rolling averages computed on scrape.
func (h *Handler) metrics(ctx *fasthttp.RequestCtx) error {
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	w := ctx.Response.BodyWriter()
	if h.fwd != nil {
		h.fwd.prune()
	}
	h.ms.WritePrometheus(w)
	// Written from the shards' own count at scrape time, so there is no
	// second counter to keep in step.
	metrics.WriteCounterUint64(w, "devices_evicted_total", h.set.Evicted())
	for _, m := range h.opts.Metrics {
		m.WritePrometheus(w)
	}
	metrics.WriteProcessMetrics(w)
	by, err := h.set.MetricMeans()
	if err != nil {
		return nil // shutting down: the rest of the page is still valid
	}
	h.writeRollingAverages(w, by)
	return nil
}

// writeRollingAverages writes rolling_average_current{metric}: per metric
// name, the mean of its streams' rolling averages. Only the names with the
// most streams get their own series; the rest share metric="(other)", so a
// client sending random names cannot blow up the series count. Parentheses
// cannot occur in a metric name, so no client's name collides with it (a
// metric named "_other" made a duplicate series).
func (h *Handler) writeRollingAverages(w io.Writer, by map[string]shard.MetricSummary) {
	names := make([]string, 0, len(by))
	for name := range by {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := by[names[i]], by[names[j]]
		if a.Streams != b.Streams {
			return a.Streams > b.Streams
		}
		return names[i] < names[j]
	})
	if len(names) > 0 {
		// Once for the family: metrics.WriteGaugeFloat64 would repeat HELP
		// and TYPE before every series, which the text format forbids.
		metrics.WriteMetadataIfNeeded(w, "rolling_average_current", "gauge")
	}
	var rest shard.MetricSummary
	for i, name := range names {
		m := by[name]
		if i >= h.opts.MaxMetricLabels {
			n := rest.Streams + m.Streams
			rest.Mean += (m.Mean - rest.Mean) * float64(m.Streams) / float64(n)
			rest.Streams = n
			continue
		}
		fmt.Fprintf(w, "rolling_average_current{metric=%q} %g\n", name, m.Mean)
	}
	if rest.Streams > 0 {
		fmt.Fprintf(w, "rolling_average_current{metric=\"(other)\"} %g\n", rest.Mean)
	}
}
