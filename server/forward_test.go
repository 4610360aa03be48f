package server

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"ai-load-service/shard"
)

// TestForwardBodyRoundTrip: the body a pod forwards decodes, on the owner,
// to exactly the samples it carries: devices, ts (explicit, also where the
// client left it to the receive time) and every value bit for bit.
func TestForwardBodyRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var b shard.Batch
	for i := range 200 {
		b.Add([]byte(fmt.Sprint("dev:", i%37, "-x.y_z")), rng.Int64N(1<<50))
		for m := range 1 + rng.IntN(5) {
			v := rng.NormFloat64() * math.Pow(10, float64(rng.IntN(300)-150))
			switch m {
			case 1:
				v = math.Nextafter(1, 2)
			case 2:
				v = -1e150
			case 3:
				v = math.Copysign(0, -1)
			}
			b.AddMetric([]byte(fmt.Sprint("m", m, ".a:b-c_d")), v)
		}
	}
	var idx []int32
	for i := range b.Len() {
		if rng.IntN(3) > 0 {
			idx = append(idx, int32(i))
		}
	}
	body := appendForward(nil, &b, idx)
	var got shard.Batch
	if err := decodeIngest(new(scanner), body, &got, 0); err != nil {
		t.Fatalf("forwarded body refused: %v\n%s", err, body)
	}
	if got.Len() != len(idx) {
		t.Fatalf("%d samples; want %d", got.Len(), len(idx))
	}
	for k, i := range idx {
		i := int(i)
		if string(got.Device(k)) != string(b.Device(i)) || got.TS(k) != b.TS(i) || got.SampleMetrics(k) != b.SampleMetrics(i) {
			t.Fatalf("sample %d: %s@%d (%d metrics); want %s@%d (%d)", k, got.Device(k), got.TS(k), got.SampleMetrics(k),
				b.Device(i), b.TS(i), b.SampleMetrics(i))
		}
		for j := range b.SampleMetrics(i) {
			if string(got.MetricName(k, j)) != string(b.MetricName(i, j)) ||
				math.Float64bits(got.Value(k, j)) != math.Float64bits(b.Value(i, j)) {
				t.Fatalf("sample %d metric %d: %s=%v; want %s=%v", k, j, got.MetricName(k, j), got.Value(k, j), b.MetricName(i, j), b.Value(i, j))
			}
		}
	}
}

// TestForwardReplyDecode: the owner's answer to a forwarded part reads
// back field for field, escapes, unknown fields and null included, and a
// malformed one is an error rather than a partial reply.
func TestForwardReplyDecode(t *testing.T) {
	body := `{"accepted":3,"anomalies":[{"device":"d\u00e9v\"1","metric":"m.a","ts":-17,"value":1e300,"mean":-0.5,` +
		`"stddev":null,"z":4.25,"sample":2,"new":{"x":[1,true]}}],"head":{"Window":7,"Size":50,"Mean":0.125},"later":null}` + "\n"
	var r reply
	if err := new(scanner).reply([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.anomalies) != 1 || !r.hasHead || r.err != "" {
		t.Fatalf("%+v", r)
	}
	a := r.anomalies[0]
	if a.at != 2 || a.a.Device != "dév\"1" || a.a.Metric != "m.a" || a.a.TS != -17 || a.a.Value != 1e300 ||
		a.a.Mean != -0.5 || !math.IsNaN(a.a.Stddev) || a.a.Z != 4.25 {
		t.Fatalf("anomaly %+v", a)
	}
	if r.head != (shard.StreamHead{Window: 7, Size: 50, Mean: 0.125}) {
		t.Fatalf("head %+v", r.head)
	}

	var e reply
	if err := new(scanner).reply([]byte(`{"error":"ingest queue is full","index":3}`), &e); err != nil || e.err != "ingest queue is full" {
		t.Fatalf("%v %+v", err, e)
	}
	for _, bad := range []string{``, `[]`, `{"anomalies":{}}`, `{"anomalies":[{"sample":-1}]}`, `{"head":{"Size":1.5}}`,
		`{"error":3}`, `{"anomalies":[{"ts":1.5}]}`, `{"accepted":1} x`, `<html>bad gateway</html>`} {
		if err := new(scanner).reply([]byte(bad), new(reply)); err == nil {
			t.Errorf("%q read without error", bad)
		}
	}
}
