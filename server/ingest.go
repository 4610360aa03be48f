package server

import (
	"strconv"

	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

type decodeFunc func(s *scanner, body []byte, b *shard.Batch, now int64) error

// ingest serves POST /api/v1/ingest: one sample or an array, all or nothing.
func (h *Handler) ingest(ctx *fasthttp.RequestCtx) error {
	return h.apply(ctx, decodeIngest, func(dst []byte, b *shard.Batch) []byte {
		dst = append(dst, `{"accepted":`...)
		dst = strconv.AppendInt(dst, int64(b.Len()), 10)
		dst = append(dst, `,"anomalies":`...)
		dst = appendAnomalies(dst, b.Anomalies)
		return append(dst, "}\n"...)
	})
}

// metric serves the prototype's POST /metric. Members forward only to
// /api/v1/ingest: a forwarded marker here is a client's, and ignored (it
// would have the request answered in the members' format).
func (h *Handler) metric(ctx *fasthttp.RequestCtx) error {
	ctx.Request.Header.Del(hdrForwarded)
	return h.apply(ctx, decodeMetric, func(dst []byte, b *shard.Batch) []byte {
		dst = append(dst, `{"status":"received","device_id":`...)
		dst = appendString(dst, b.Device(0))
		dst = append(dst, `,"window":`...)
		dst = strconv.AppendInt(dst, int64(b.Head.Window), 10)
		dst = append(dst, `,"window_size":`...)
		dst = strconv.AppendInt(dst, int64(b.Head.Size), 10)
		dst = append(dst, `,"rolling_average":`...)
		dst = appendFloat(dst, b.Head.Mean)
		dst = append(dst, `,"is_anomaly":`...)
		dst = strconv.AppendBool(dst, len(b.Anomalies) > 0)
		dst = append(dst, `,"anomalies":`...)
		dst = appendAnomalies(dst, b.Anomalies)
		return append(dst, "}\n"...)
	})
}

// apply decodes the body into a pooled batch, hands it to the shards (or,
// in cluster mode, each part to its owner) and writes the response. The
// batch holds copies: nothing of ctx reaches a shard.
func (h *Handler) apply(ctx *fasthttp.RequestCtx, decode decodeFunc, encode func([]byte, *shard.Batch) []byte) error {
	st := h.pool.Get().(*ingestState)
	defer h.pool.Put(st)
	st.batch.Reset()
	st.batch.SetReceived(ctx.Time().UnixNano())
	st.scanner.maxBatch = h.opts.MaxBatch
	if err := decode(&st.scanner, ctx.PostBody(), &st.batch, ctx.Time().UnixMilli()); err != nil {
		return err
	}
	if h.fwd != nil {
		return h.applyCluster(ctx, st, encode)
	}
	return h.applyLocal(ctx, st, encode)
}

// applyLocal applies st.batch here, whole, and writes the response.
func (h *Handler) applyLocal(ctx *fasthttp.RequestCtx, st *ingestState, encode func([]byte, *shard.Batch) []byte) error {
	if err := h.set.Ingest(&st.batch); err != nil {
		return err
	}
	h.count(&st.batch)
	st.out = encode(st.out[:0], &st.batch)
	ctx.SetContentType("application/json")
	ctx.SetBody(st.out)
	return nil
}

// count adds an applied batch to the ingest counters.
func (h *Handler) count(b *shard.Batch) {
	h.samples.Add(b.Applied())
	h.anomalies.Add(len(b.Anomalies))
	h.anomalous.Add(b.Anomalous)
}
