package server

import (
	"math"
	"strconv"
	"unicode/utf8"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"
)

// appendString appends s as a JSON string.
func appendString[T string | []byte](dst []byte, s T) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
			continue
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
			i++
			continue
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// appendFloat appends f as a JSON number; JSON has no NaN or Inf, so those
// become null (the detector never produces them from valid input).
func appendFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64)
}

func appendAnomalies(dst []byte, as []shard.Anomaly) []byte {
	return appendAnomalyList(dst, as, false)
}

// appendAnomalyList writes as as a JSON array; withSample adds each
// anomaly's sample index, for the answer to a forwarded part.
func appendAnomalyList(dst []byte, as []shard.Anomaly, withSample bool) []byte {
	dst = append(dst, '[')
	for i := range as {
		a := &as[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"device":`...)
		dst = appendString(dst, a.Device)
		dst = append(dst, `,"metric":`...)
		dst = appendString(dst, a.Metric)
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, a.TS, 10)
		dst = append(dst, `,"value":`...)
		dst = appendFloat(dst, a.Value)
		dst = append(dst, `,"mean":`...)
		dst = appendFloat(dst, a.Mean)
		dst = append(dst, `,"stddev":`...)
		dst = appendFloat(dst, a.Stddev)
		dst = append(dst, `,"z":`...)
		dst = appendFloat(dst, a.Z)
		if a.Reason != detect.ReasonNone {
			dst = append(dst, `,"reason":"`...)
			dst = append(dst, a.Reason.String()...)
			dst = append(dst, '"')
		}
		if withSample {
			dst = append(dst, `,"sample":`...)
			dst = strconv.AppendInt(dst, int64(a.Sample()), 10)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}
