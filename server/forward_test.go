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
