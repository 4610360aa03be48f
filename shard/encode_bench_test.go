package shard

import (
	"fmt"
	"testing"
)

// BenchmarkEncode encodes one device (2 metrics, full windows of 50) into
// a reused buffer, as a snapshot round does, with an empty alert history
// and with a full one (HISTORY_LEN 100): what a busy device costs each
// round once its history has filled.
func BenchmarkEncode(b *testing.B) {
	for _, alerts := range []int{0, 100} {
		b.Run(fmt.Sprint("history=", alerts), func(b *testing.B) {
			s := MustNewSet(b, Options{Shards: 1})
			for i := range 60 {
				ingestOne(b, s, "dev", int64(i), map[string]float64{"cpu": float64(i % 7), "rps": float64(i % 11)})
			}
			var d *device
			for _, d = range s.shards[0].devices {
			}
			for i := range alerts {
				d.remember(Anomaly{Device: d.id, Metric: "cpu", TS: int64(i), Value: 1, Mean: 2, Stddev: 3, Z: 4}, s.opts.HistoryLen)
			}
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				buf = d.appendEncoded(buf[:0])
			}
			b.ReportMetric(float64(len(buf)), "bytes/device")
		})
	}
}
