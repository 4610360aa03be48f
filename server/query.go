package server

import (
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"
)

// deviceID unescapes, copies and validates the {device} path parameter.
// The router matches the raw path, so an escaped '/' cannot split a
// segment, and hands the segment over still escaped (aa%3Abb from clients
// that escape ':'); it is unescaped exactly once, here, so %253A stays the
// literal %3A and fails validation.
func deviceID(ctx *fasthttp.RequestCtx) (string, error) {
	raw, _ := ctx.UserValue("device").(string)
	v, err := url.PathUnescape(raw)
	if err != nil {
		return "", badRequest("device ID in the path: %s; escape a literal %% as %%25", err)
	}
	if !deviceChars.valid([]byte(v), maxDeviceLen) {
		return "", badRequest("device ID must be 1-%d characters from A-Z a-z 0-9 . _ : -", maxDeviceLen)
	}
	return strings.Clone(v), nil // v may alias the request's buffer
}

func notFound(id string) error {
	return errorf(fasthttp.StatusNotFound, "device %q not found: it has sent no samples to this replica", id)
}

// device serves GET /api/v1/devices/{device}.
func (h *Handler) device(ctx *fasthttp.RequestCtx) error {
	id, err := deviceID(ctx)
	if err != nil {
		return err
	}
	if done, err := h.forwardRead(ctx, id); done || err != nil {
		return err
	}
	ms, ok, err := h.set.Device(id)
	if err != nil {
		return h.movedRead(ctx, id, err)
	}
	if !ok {
		return notFound(id)
	}
	b := append([]byte(`{"device":`), appendString(nil, id)...)
	b = append(b, `,"metrics":{`...)
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, m.Name)
		b = append(b, `:{"count":`...)
		b = strconv.AppendUint(b, m.Count, 10)
		b = append(b, `,"window":`...)
		b = strconv.AppendInt(b, int64(m.Window), 10)
		b = append(b, `,"mean":`...)
		b = appendFloat(b, m.Mean)
		b = append(b, `,"stddev":`...)
		b = appendFloat(b, m.Stddev)
		b = append(b, `,"last":`...)
		b = appendFloat(b, m.Last)
		b = append(b, `,"last_z":`...)
		b = appendFloat(b, m.LastZ)
		b = append(b, `,"anomalies":`...)
		b = strconv.AppendUint(b, m.Anomalies, 10)
		b = append(b, `,"anomalous_samples":`...)
		b = strconv.AppendUint(b, m.Anomalous, 10)
		b = append(b, `,"detector":`...)
		b = appendString(b, m.Detector.String())
		b = append(b, `,"updated_ts":`...)
		b = strconv.AppendInt(b, m.UpdatedTS, 10)
		b = append(b, '}')
	}
	b = append(b, "}}\n"...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	return nil
}

// deviceAnomalies serves GET /api/v1/devices/{device}/anomalies.
func (h *Handler) deviceAnomalies(ctx *fasthttp.RequestCtx) error {
	id, err := deviceID(ctx)
	if err != nil {
		return err
	}
	if done, err := h.forwardRead(ctx, id); done || err != nil {
		return err
	}
	as, ok, err := h.set.Anomalies(id)
	if err != nil {
		return h.movedRead(ctx, id, err)
	}
	if !ok {
		return notFound(id)
	}
	b := append([]byte(`{"device":`), appendString(nil, id)...)
	b = append(b, `,"anomalies":`...)
	b = appendAnomalies(b, as)
	b = append(b, "}\n"...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	return nil
}

// analyze serves the prototype's GET /analyze, now over every stream held:
// in cluster mode, over every member's (?scope=local: this pod's alone).
func (h *Handler) analyze(ctx *fasthttp.RequestCtx) error {
	s, err := h.set.Summarize()
	if err != nil {
		return err
	}
	var unreachable []string
	if h.fwd != nil && string(ctx.QueryArgs().Peek("scope")) != "local" {
		unreachable = h.fwd.summarize(&s, slices.Clone(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)))
	}
	o := h.set.Options()
	b := []byte(`{"rolling_average":`)
	b = appendFloat(b, s.Mean)
	b = append(b, `,"std_dev":`...)
	b = appendFloat(b, s.Stddev)
	b = append(b, `,"min":`...)
	b = appendFloat(b, s.Min)
	b = append(b, `,"max":`...)
	b = appendFloat(b, s.Max)
	b = append(b, `,"anomaly_count":`...)
	b = strconv.AppendUint(b, s.Anomalies, 10)
	b = append(b, `,"total_metrics":`...)
	b = strconv.AppendUint(b, s.Samples, 10)
	b = append(b, `,"devices":`...)
	b = strconv.AppendInt(b, int64(s.Devices), 10)
	b = append(b, `,"streams":`...)
	b = strconv.AppendInt(b, int64(s.Streams), 10)
	b = append(b, `,"window_values":`...)
	b = strconv.AppendInt(b, int64(s.Values), 10)
	b = append(b, `,"window_size":`...)
	b = strconv.AppendInt(b, int64(o.WindowSize), 10)
	b = append(b, `,"threshold":`...)
	b = appendFloat(b, o.ZThreshold)
	b = append(b, `,"min_samples":`...)
	b = strconv.AppendInt(b, int64(o.MinSamples), 10)
	b = append(b, `,"algorithm":`...)
	b = appendString(b, o.Detector.String())
	b = append(b, `,"alert_cooldown":`...)
	b = strconv.AppendInt(b, int64(o.Cooldown), 10)
	if o.CooldownTime > 0 {
		b = append(b, `,"alert_cooldown_ms":`...)
		b = strconv.AppendInt(b, o.CooldownTime.Milliseconds(), 10)
	}
	if h.fwd != nil {
		b = append(b, `,"unreachable":[`...)
		for i, m := range unreachable {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, m)
		}
		b = append(b, ']')
	}
	b = append(b, '}')
	b = append(b, '\n')
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	return nil
}
