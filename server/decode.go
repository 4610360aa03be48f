package server

import (
	"math"

	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"
)

// Limits of the wire format.
const (
	maxDeviceLen  = 128
	maxMetricLen  = 64
	maxMetrics    = 64
	maxAbsValue   = 1e150 // squares of differences stay far from overflow
	defaultDevice = "default"
)

var (
	deviceChars = charset("A-Za-z0-9._:-")
	metricChars = charset("A-Za-z0-9_.:-")
)

type charTable [256]bool

func charset(spec string) *charTable {
	var t charTable
	for i := 0; i < len(spec); i++ {
		if i+2 < len(spec) && spec[i+1] == '-' {
			for c := spec[i]; c <= spec[i+2]; c++ {
				t[c] = true
			}
			i += 2
			continue
		}
		t[spec[i]] = true
	}
	return &t
}

func (t *charTable) valid(b []byte, maxLen int) bool {
	if len(b) == 0 || len(b) > maxLen {
		return false
	}
	for _, c := range b {
		if !t[c] {
			return false
		}
	}
	return true
}

func badRequest(format string, args ...any) *Error {
	return errorf(fasthttp.StatusBadRequest, format, args...)
}

// decodeIngest parses an ingest body, one sample object or an array of
// them, into b. now is the receive time in unix ms for samples without ts.
// On error b holds a partial batch that must not be ingested.
func decodeIngest(p *fastjson.Parser, body []byte, b *shard.Batch, now int64) error {
	v, err := p.ParseBytes(body)
	if err != nil {
		return badRequest("invalid JSON: %s", err)
	}
	switch v.Type() {
	case fastjson.TypeObject:
		return decodeSample(v, b, now, -1)
	case fastjson.TypeArray:
		arr, _ := v.Array()
		if len(arr) == 0 {
			return badRequest("empty batch: send one sample object or a non-empty array of them")
		}
		for i, e := range arr {
			if err := decodeSample(e, b, now, i); err != nil {
				return err
			}
		}
		return nil
	default:
		return badRequest("body must be a sample object or an array of them; got %s", v.Type())
	}
}

func decodeSample(v *fastjson.Value, b *shard.Batch, now int64, idx int) error {
	o, err := v.Object()
	if err != nil {
		return at(badRequest("sample must be a JSON object; got %s", v.Type()), idx)
	}
	var dev, ts, ms *fastjson.Value
	dup := ""
	o.Visit(func(k []byte, v *fastjson.Value) {
		var slot **fastjson.Value
		switch string(k) {
		case "device":
			slot = &dev
		case "ts":
			slot = &ts
		case "metrics":
			slot = &ms
		default:
			return // unknown fields are ignored for forward compatibility
		}
		if *slot != nil && dup == "" {
			dup = string(k)
		}
		*slot = v
	})
	if dup != "" {
		return at(badRequest("duplicate field %q", dup), idx)
	}
	if dev == nil {
		return at(badRequest(`missing "device"`), idx)
	}
	id, err := dev.StringBytes()
	if err != nil || !deviceChars.valid(id, maxDeviceLen) {
		return at(badRequest(`"device" must be a string of 1-%d characters from A-Z a-z 0-9 . _ : -`, maxDeviceLen), idx)
	}
	t := now
	if ts != nil {
		t, err = ts.Int64()
		if err != nil || t < 0 {
			return at(badRequest(`"ts" must be a non-negative integer of unix milliseconds`), idx)
		}
	}
	if ms == nil {
		return at(badRequest(`missing "metrics"`), idx)
	}
	mo, err := ms.Object()
	if err != nil {
		return at(badRequest(`"metrics" must be an object of name: number`), idx)
	}
	if n := mo.Len(); n == 0 || n > maxMetrics {
		return at(badRequest(`"metrics" must have 1-%d entries; got %d`, maxMetrics, n), idx)
	}
	i := b.Len()
	b.Add(id, t)
	var bad *Error
	mo.Visit(func(k []byte, v *fastjson.Value) {
		if bad == nil {
			bad = addMetric(b, i, k, v)
		}
	})
	if bad != nil {
		return at(bad, idx)
	}
	return nil
}

// addMetric validates one name and value and adds them to sample i of b.
func addMetric(b *shard.Batch, i int, name []byte, v *fastjson.Value) *Error {
	if !metricChars.valid(name, maxMetricLen) {
		return badRequest("metric name %q must be 1-%d characters from A-Z a-z 0-9 _ . : -", clip(name), maxMetricLen)
	}
	for j := range b.SampleMetrics(i) {
		if string(b.MetricName(i, j)) == string(name) {
			return badRequest("duplicate metric %q", name)
		}
	}
	if v.Type() != fastjson.TypeNumber {
		return badRequest("metric %q must be a number; got %s", name, v.Type())
	}
	f, err := v.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return badRequest("metric %q must be a finite number", name)
	}
	if math.Abs(f) > maxAbsValue {
		return badRequest("metric %q is out of range: |value| must be at most %g", name, maxAbsValue)
	}
	b.AddMetric(name, f)
	return nil
}

// decodeMetric parses the prototype's body: {"rps":1,"cpu":2,"timestamp":
// 1732560000[, "device_id": "x"]}. Every other numeric field is a metric.
func decodeMetric(p *fastjson.Parser, body []byte, b *shard.Batch, now int64) error {
	v, err := p.ParseBytes(body)
	if err != nil {
		return badRequest("invalid JSON: %s", err)
	}
	o, err := v.Object()
	if err != nil {
		return badRequest("body must be a JSON object like {\"rps\": 120, \"cpu\": 55.5}; got %s", v.Type())
	}
	var dev, ts *fastjson.Value
	var bad *Error
	dups := 0
	o.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "device_id":
			if dev != nil {
				dups++
			}
			dev = v
		case "timestamp":
			if ts != nil {
				dups++
			}
			ts = v
		}
	})
	if dups > 0 {
		return badRequest(`duplicate "device_id" or "timestamp"`)
	}
	id := []byte(defaultDevice)
	if dev != nil {
		id, err = dev.StringBytes()
		if err != nil || !deviceChars.valid(id, maxDeviceLen) {
			return badRequest(`"device_id" must be a string of 1-%d characters from A-Z a-z 0-9 . _ : -`, maxDeviceLen)
		}
	}
	t := now
	if ts != nil {
		f, err := ts.Float64()
		if ts.Type() != fastjson.TypeNumber || err != nil || math.IsNaN(f) || f < 0 || f > 1e16 {
			return badRequest(`"timestamp" must be unix seconds, or milliseconds when above 1e12`)
		}
		if f <= 1e12 {
			f *= 1000
		}
		t = int64(math.Round(f))
	}
	b.Add(id, t)
	o.Visit(func(k []byte, v *fastjson.Value) {
		if bad != nil || v.Type() != fastjson.TypeNumber || string(k) == "timestamp" {
			return
		}
		if b.SampleMetrics(0) == maxMetrics {
			bad = badRequest("at most %d numeric fields per request", maxMetrics)
			return
		}
		bad = addMetric(b, 0, k, v)
	})
	if bad != nil {
		return bad
	}
	if b.SampleMetrics(0) == 0 {
		return badRequest(`no numeric field: send e.g. {"rps": 120, "cpu": 55.5}`)
	}
	return nil
}

// clip shortens a client's string for an error message.
func clip(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}
