package shard_test

import (
	"fmt"

	"ai-load-service/shard"
)

func ExampleSet_Ingest() {
	s := shard.New(shard.Options{Shards: 2, Detector: shard.ZScore, Cooldown: -1, WindowSize: 5, MinSamples: 3})
	defer s.Stop()

	var b shard.Batch
	for i, v := range []float64{20, 21, 20, 21, 35} {
		b.Reset()
		b.Add([]byte("sensor-42"), int64(i))
		b.AddMetric([]byte("temp"), v)
		if err := s.Ingest(&b); err != nil {
			panic(err)
		}
	}
	for _, a := range b.Anomalies {
		fmt.Printf("%s %s value=%g mean=%g stddev=%g z=%g\n", a.Device, a.Metric, a.Value, a.Mean, a.Stddev, a.Z)
	}
	ms, _, _ := s.Device("sensor-42")
	fmt.Printf("count=%d window=%d mean=%g\n", ms[0].Count, ms[0].Window, ms[0].Mean)
	// Output:
	// sensor-42 temp value=35 mean=20.5 stddev=0.5 z=29
	// count=5 window=5 mean=23.4
}

func ExampleWindow() {
	w := shard.NewWindow(3)
	for _, x := range []float64{1e9 + 1, 1e9 + 2, 1e9 + 3, 1e9 + 4} {
		w.Push(x)
	}
	mean, sd := w.Stats()
	fmt.Printf("values=%v mean=%.1f stddev=%.6f\n", w.Values(nil), mean, sd)
	// Output:
	// values=[1.000000002e+09 1.000000003e+09 1.000000004e+09] mean=1000000003.0 stddev=0.816497
}

func ExampleStream_Observe() {
	p := shard.Params{Kind: shard.ZScore, Window: 10, MinSamples: 3, Threshold: 3, MinStddev: 1e-9}
	st := shard.NewStream(10)
	for _, x := range []float64{10, 12, 10, 12} {
		st.Observe(x, 0, &p)
	}
	sc := st.Observe(20, 0, &p)
	fmt.Printf("z=%g anomaly=%v count=%d\n", sc.Z, sc.Alert, st.Count)
	// Output:
	// z=9 anomaly=true count=5
}

func ExampleSet_Anomalies() {
	s := shard.New(shard.Options{Shards: 1, Detector: shard.ZScore, Cooldown: -1, WindowSize: 4, MinSamples: 2})
	defer s.Stop()
	var b shard.Batch
	for i, v := range []float64{1, 1, 9, 1, 1, 1, 1, -9} {
		b.Reset()
		b.Add([]byte("pump-3"), int64(1000+i))
		b.AddMetric([]byte("pressure"), v)
		if err := s.Ingest(&b); err != nil {
			panic(err)
		}
	}
	as, found, _ := s.Anomalies("pump-3")
	fmt.Println("found:", found)
	for _, a := range as {
		fmt.Printf("ts=%d value=%g\n", a.TS, a.Value)
	}
	_, found, _ = s.Anomalies("pump-4")
	fmt.Println("unknown device found:", found)
	// Output:
	// found: true
	// ts=1007 value=-9
	// ts=1002 value=9
	// unknown device found: false
}

func ExampleSet_Summarize() {
	s := shard.New(shard.Options{Shards: 2, WindowSize: 3})
	defer s.Stop()
	var b shard.Batch
	b.Add([]byte("a"), 0)
	b.AddMetric([]byte("temp"), 10)
	b.Add([]byte("b"), 0)
	b.AddMetric([]byte("temp"), 20)
	b.AddMetric([]byte("hum"), 50)
	if err := s.Ingest(&b); err != nil {
		panic(err)
	}
	sum, _ := s.Summarize()
	fmt.Printf("devices=%d streams=%d mean=%.2f min=%g max=%g\n",
		sum.Devices, sum.Streams, sum.Mean, sum.Min, sum.Max)
	// Output:
	// devices=2 streams=3 mean=26.67 min=10 max=50
}

func ExampleSet_MetricMeans() {
	s := shard.New(shard.Options{Shards: 2, WindowSize: 3})
	defer s.Stop()
	var b shard.Batch
	b.Add([]byte("a"), 0)
	b.AddMetric([]byte("temp"), 10)
	b.Add([]byte("b"), 0)
	b.AddMetric([]byte("temp"), 20)
	b.AddMetric([]byte("hum"), 50)
	if err := s.Ingest(&b); err != nil {
		panic(err)
	}
	by, _ := s.MetricMeans()
	fmt.Printf("temp: %d streams, mean %g; hum: %d, mean %g\n", by["temp"].Streams, by["temp"].Mean, by["hum"].Streams, by["hum"].Mean)
	// Output:
	// temp: 2 streams, mean 15; hum: 1, mean 50
}

func ExampleParseRules() {
	def := shard.Params{Kind: shard.Winsor, Window: 50, MinSamples: 10, Threshold: 4, MinStddev: 1e-9, Cooldown: 50}
	rules, err := shard.ParseRules([]byte(`{"rules": [{"match": "temp*", "detector": "ewma", "window": 100}]}`), def)
	fmt.Println(rules[0].Match, rules[0].Params.Kind, rules[0].Params.Window, rules[0].Params.Threshold, err)
	_, err = shard.ParseRules([]byte(`{"rules": [{"match": "hum", "window": 1}]}`), def)
	fmt.Println(err)
	// Output:
	// temp* ewma 100 4 <nil>
	// detector config rule 1 (match "hum"): window=1: want 2 to 100000
}

func ExampleDecodeSnapshot() {
	s := shard.Snapshot{Device: "pump-3", Gen: 7, Streams: []shard.StreamSnapshot{{Name: "pressure", Values: []float64{1.5, 2}, Count: 2}}}
	b := s.AppendBinary(nil)
	got, err := shard.DecodeSnapshot(b)
	fmt.Println(len(b), got.Device, got.Gen, got.Streams[0].Name, got.Streams[0].Values, err)
	_, err = shard.DecodeSnapshot(b[:len(b)-1])
	fmt.Println(err)
	// Output:
	// 142 pump-3 7 pressure [1.5 2] <nil>
	// corrupt snapshot: bad varint
}

func ExampleSet_Collect() {
	// Any Store will do for the example: one that has nothing stored.
	s := shard.New(shard.Options{Shards: 1, Store: emptyStore{}})
	defer s.Stop()
	var b shard.Batch
	b.Add([]byte("sensor-1"), 0)
	b.AddMetric([]byte("temp"), 21)
	if err := s.Ingest(&b); err != nil {
		panic(err)
	}
	snaps, _ := s.Collect(false)
	again, _ := s.Collect(false)
	fmt.Println(len(snaps), snaps[0].Device, len(again))
	// Output:
	// 1 sensor-1 0
}

type emptyStore struct{}

func (emptyStore) Load(id string, done func(*shard.Snapshot, error)) { go done(nil, nil) }

func ExampleBatch_AppendSample() {
	var all, part shard.Batch
	all.Add([]byte("a"), 1)
	all.AddMetric([]byte("temp"), 20)
	all.Add([]byte("b"), 2)
	all.AddMetric([]byte("temp"), 30)
	all.AddMetric([]byte("hum"), 40)
	part.AppendSample(&all, 1)
	fmt.Println(part.Len(), string(part.Device(0)), part.TS(0), string(part.MetricName(0, 1)), part.Value(0, 1))
	// Output:
	// 1 b 2 hum 40
}
