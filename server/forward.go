package server

import (
	"strconv"

	"ai-load-service/shard"
)

// appendForward appends samples idx of b as an ingest body for the pod
// that owns their devices: every ts explicit (a missing one was this pod's
// receive time, which the owner must apply too) and every value in the
// shortest form that parses back to the same float64.
func appendForward(dst []byte, b *shard.Batch, idx []int32) []byte {
	dst = append(dst, '[')
	for k, i := range idx {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"device":`...)
		dst = appendString(dst, b.Device(int(i)))
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, b.TS(int(i)), 10)
		dst = append(dst, `,"metrics":{`...)
		for j := range b.SampleMetrics(int(i)) {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, b.MetricName(int(i), j))
			dst = append(dst, ':')
			dst = strconv.AppendFloat(dst, b.Value(int(i), j), 'g', -1, 64)
		}
		dst = append(dst, "}}"...)
	}
	return append(dst, ']')
}
