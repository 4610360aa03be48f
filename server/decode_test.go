package server

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"ai-load-service/shard"
)

// encodeBatch writes b back as an ingest body, the inverse of decodeIngest.
func encodeBatch(b *shard.Batch, ts []int64, vals [][]float64) []byte {
	out := []byte{'['}
	for i := range b.Len() {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"device":`...)
		out = appendString(out, b.Device(i))
		out = append(out, `,"ts":`...)
		out = strconv.AppendInt(out, ts[i], 10)
		out = append(out, `,"metrics":{`...)
		for j := range b.SampleMetrics(i) {
			if j > 0 {
				out = append(out, ',')
			}
			out = appendString(out, b.MetricName(i, j))
			out = append(out, ':')
			out = appendFloat(out, vals[i][j])
		}
		out = append(out, "}}"...)
	}
	return append(out, ']')
}

// inspect returns the timestamps and values of b by ingesting nothing:
// the batch keeps them privately, so read them through a Set.
func snapshot(t *testing.T, b *shard.Batch) (devs []string, names [][]string) {
	for i := range b.Len() {
		devs = append(devs, string(b.Device(i)))
		var ns []string
		for j := range b.SampleMetrics(i) {
			ns = append(ns, string(b.MetricName(i, j)))
		}
		names = append(names, ns)
	}
	return devs, names
}

func FuzzDecodeIngest(f *testing.F) {
	f.Add([]byte(`{"device":"sensor-42","ts":1732560000123,"metrics":{"temp":21.5,"hum":40}}`))
	f.Add([]byte(`[{"device":"a","metrics":{"x":1}},{"device":"b.c:d_e-f","ts":0,"metrics":{"y.z":-1e-300}}]`))
	f.Add([]byte(`{"device":"s\u0041","metrics":{"t":1e150},"extra":[1,2,{"a":null}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"device":"d","metrics":{"t":NaN}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var p scanner
		var b shard.Batch
		if err := decodeIngest(&p, body, &b, 77); err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("decode error is not an *Error: %T %v", err, err)
			}
			return
		}
		if b.Len() == 0 {
			t.Fatal("accepted an empty batch")
		}
		devs, names := snapshot(t, &b)
		for i, d := range devs {
			if !deviceChars.valid([]byte(d), maxDeviceLen) {
				t.Fatalf("accepted bad device %q", d)
			}
			if len(names[i]) == 0 || len(names[i]) > maxMetrics {
				t.Fatalf("accepted %d metrics", len(names[i]))
			}
			for _, n := range names[i] {
				if !metricChars.valid([]byte(n), maxMetricLen) {
					t.Fatalf("accepted bad metric name %q", n)
				}
			}
		}
		// Round trip through a Set: the decoded values must be finite and
		// the re-encoded body must decode to the same devices and names.
		set := shard.New(shard.Options{Shards: 1, WindowSize: 2})
		defer set.Stop()
		if err := set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
		var ts []int64
		var vals [][]float64
		for i, d := range devs {
			ms, ok, _ := set.Device(d)
			if !ok {
				t.Fatalf("device %q not stored", d)
			}
			row := make([]float64, len(names[i]))
			for j, n := range names[i] {
				for _, m := range ms {
					if m.Name == n {
						row[j] = m.Last
						if math.IsNaN(m.Last) || math.IsInf(m.Last, 0) {
							t.Fatalf("stored non-finite value %v", m.Last)
						}
					}
				}
			}
			ts = append(ts, 0)
			vals = append(vals, row)
		}
		again := encodeBatch(&b, ts, vals)
		var b2 shard.Batch
		if err := decodeIngest(&p, again, &b2, 77); err != nil {
			t.Fatalf("re-encoded batch rejected: %v\n%s", err, again)
		}
		devs2, names2 := snapshot(t, &b2)
		if strings.Join(devs, ",") != strings.Join(devs2, ",") {
			t.Fatalf("devices changed in round trip: %v vs %v", devs, devs2)
		}
		for i := range names {
			if strings.Join(names[i], ",") != strings.Join(names2[i], ",") {
				t.Fatalf("names changed in round trip: %v vs %v", names[i], names2[i])
			}
		}
	})
}

func BenchmarkDecodeIngest1(b *testing.B)   { benchmarkDecodeIngest(b, 1) }
func BenchmarkDecodeIngest100(b *testing.B) { benchmarkDecodeIngest(b, 100) }

func benchmarkDecodeIngest(b *testing.B, n int) {
	body := ingestBody(n, 0)
	var p scanner
	var bt shard.Batch
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for range b.N {
		bt.Reset()
		if err := decodeIngest(&p, body, &bt, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "samples/s")
}

// ingestBody returns a batch of n samples for devices from off on.
func ingestBody(n, off int) []byte {
	var sb strings.Builder
	if n > 1 {
		sb.WriteByte('[')
	}
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"device":"sensor-` + strconv.Itoa(off+i) + `","ts":1732560000123,"metrics":{"temp":21.5,"hum":40.25}}`)
	}
	if n > 1 {
		sb.WriteByte(']')
	}
	return []byte(sb.String())
}
