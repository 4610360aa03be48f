package server

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// Error is a failure a client can act on: its status and message reach the
// client as {"error": msg[, "index": i]}.
type Error struct {
	Status int
	Msg    string
	Index  int // position of the bad element in a batch; -1 when none
	// Reason labels the rejection in rejections_total; empty: one from
	// the status (see reasonOf).
	Reason string
}

func (e *Error) Error() string { return e.Msg }

func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...), Index: -1}
}

// asError returns e as an error: nil stays nil rather than becoming a
// non-nil interface holding a nil *Error.
func asError(e *Error) error {
	if e == nil {
		return nil
	}
	return e
}

// at returns e with the batch index i attached, or e itself when i < 0.
func at(e *Error, i int) *Error {
	if i >= 0 {
		e.Index = i
	}
	return e
}

// writeError maps err to a status and JSON body. It is the one place that
// decides what a client sees of an error: details of internal errors go to
// the log only.
func (h *Handler) writeError(ctx *fasthttp.RequestCtx, err error) {
	var e *Error
	var limit *shard.StreamLimitError
	var devLimit *shard.DeviceLimitError
	var part *partialError
	if errors.As(err, &part) {
		h.writePartial(ctx, part)
		return
	}
	switch {
	case errors.As(err, &e):
	case errors.As(err, &limit):
		e = at(errorf(fasthttp.StatusTooManyRequests,
			"%s; reuse metric names, or raise MAX_STREAMS_PER_DEVICE (now %d); nothing from this request was applied",
			limit, limit.Limit), limit.Index)
		e.Reason = "too_many_streams"
	case errors.As(err, &devLimit):
		e = errorf(fasthttp.StatusTooManyRequests,
			"%s; raise MAX_DEVICES (now %d), or add replicas; devices already held keep working; nothing from this request was applied",
			devLimit, devLimit.Limit)
		e.Reason = "too_many_devices"
	case errors.Is(err, shard.ErrOverloaded):
		ctx.Response.Header.Set("Retry-After", "1")
		e = errorf(fasthttp.StatusServiceUnavailable, "ingest queue is full (QUEUE_LEN=%d requests waiting per shard); retry after a short backoff, add replicas, or raise QUEUE_LEN",
			h.set.Options().QueueLen)
		e.Reason = "queue_full"
	case errors.Is(err, shard.ErrStopped):
		e = errorf(fasthttp.StatusServiceUnavailable, "server is shutting down; retry on another replica")
		e.Reason = "stopping"
	default:
		h.log.Error().Err(err).Bytes("path", ctx.Path()).Msg("internal error")
		e = errorf(fasthttp.StatusInternalServerError, "internal error")
	}
	if e.Status == fasthttp.StatusUnauthorized {
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, `Bearer realm="ai-load-service"`)
	}
	h.rejected(reasonOf(e))
	buf := append(ctx.Response.Body()[:0], `{"error":`...)
	buf = appendString(buf, e.Msg)
	if e.Index >= 0 {
		buf = append(buf, `,"index":`...)
		buf = strconv.AppendInt(buf, int64(e.Index), 10)
	}
	buf = append(buf, "}\n"...)
	ctx.SetStatusCode(e.Status)
	ctx.SetContentType("application/json")
	ctx.SetBody(buf)
}

// readError maps an error fasthttp met reading a request, before any route
// ran, to what the client sees.
func (h *Handler) readError(err error) *Error {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return bodyTooLarge(h.opts.MaxBodyBytes)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errorf(fasthttp.StatusRequestTimeout, "request not received within %s (READ_TIMEOUT); send each request whole and promptly", h.opts.Timeouts.Read)
	case errors.As(err, &small):
		return errorf(fasthttp.StatusRequestHeaderFieldsTooLarge, "request headers too large")
	}
	return errorf(fasthttp.StatusBadRequest, "cannot parse request: %s", err)
}

func bodyTooLarge(max int) *Error {
	return errorf(fasthttp.StatusRequestEntityTooLarge, "request body exceeds %d bytes (MAX_BODY_BYTES); split the batch or raise MAX_BODY_BYTES", max)
}

// statusOf is the status writeError answers err with.
func statusOf(err error) int {
	var e *Error
	var limit *shard.StreamLimitError
	var devLimit *shard.DeviceLimitError
	switch {
	case errors.As(err, &e):
		return e.Status
	case errors.As(err, &limit), errors.As(err, &devLimit):
		return fasthttp.StatusTooManyRequests
	case errors.Is(err, shard.ErrOverloaded), errors.Is(err, shard.ErrStopped):
		return fasthttp.StatusServiceUnavailable
	}
	return fasthttp.StatusInternalServerError
}

// writePartial answers a request applied in part (cluster mode): the
// status, the problem, and the indexes of the samples applied, so a client
// can resend the others and nothing twice.
func (h *Handler) writePartial(ctx *fasthttp.RequestCtx, e *partialError) {
	h.rejected("partly_applied")
	if e.status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	buf := append(ctx.Response.Body()[:0], `{"error":`...)
	buf = appendString(buf, e.msg+"; the samples at the indexes in applied were applied, resend the others")
	buf = append(buf, `,"applied":[`...)
	first := true
	for i, ok := range e.applied {
		if ok {
			if !first {
				buf = append(buf, ',')
			}
			first = false
			buf = strconv.AppendInt(buf, int64(i), 10)
		}
	}
	buf = append(buf, "]}\n"...)
	ctx.SetStatusCode(e.status)
	ctx.SetContentType("application/json")
	ctx.SetBody(buf)
}

// reasonOf is e's rejections_total label: its Reason, or one from its
// status.
func reasonOf(e *Error) string {
	if e.Reason != "" {
		return e.Reason
	}
	switch e.Status {
	case fasthttp.StatusBadRequest:
		return "invalid_request"
	case fasthttp.StatusUnauthorized:
		return "unauthorized"
	case fasthttp.StatusNotFound:
		return "not_found"
	case fasthttp.StatusMethodNotAllowed:
		return "method_not_allowed"
	case fasthttp.StatusRequestTimeout:
		return "request_timeout"
	case fasthttp.StatusRequestEntityTooLarge:
		return "body_too_large"
	case fasthttp.StatusMisdirectedRequest:
		return "misdirected"
	case fasthttp.StatusRequestHeaderFieldsTooLarge:
		return "headers_too_large"
	case fasthttp.StatusServiceUnavailable:
		return "unavailable"
	case fasthttp.StatusInternalServerError:
		return "internal"
	}
	return "status_" + strconv.Itoa(e.Status)
}

// rejected counts a rejection by reason.
func (h *Handler) rejected(reason string) {
	h.ms.GetOrCreateCounter(`rejections_total{reason="` + reason + `"}`).Inc()
}

// authFailed counts a request refused for its credential, by route.
func (h *Handler) authFailed(route string) {
	h.ms.GetOrCreateCounter(fmt.Sprintf(`auth_failures_total{route=%q}`, route)).Inc()
}
