package shard_test

import (
	"fmt"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"
)

func ExampleSet_Ingest() {
	s := shard.New(shard.Options{Shards: 2, Detector: detect.ZScore, Cooldown: -1, WindowSize: 5, MinSamples: 3})
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

func ExampleSet_Anomalies() {
	s := shard.New(shard.Options{Shards: 1, Detector: detect.ZScore, Cooldown: -1, WindowSize: 4, MinSamples: 2})
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

func ExampleDecodeSnapshot() {
	s := shard.Snapshot{Device: "pump-3", Gen: 7, Streams: []shard.StreamSnapshot{{Name: "pressure", Values: []float64{1.5, 2}, Count: 2}}}
	b := s.AppendBinary(nil)
	got, err := shard.DecodeSnapshot(b)
	fmt.Println(len(b), got.Device, got.Gen, got.Streams[0].Name, got.Streams[0].Values, err)
	_, err = shard.DecodeSnapshot(b[:len(b)-1])
	fmt.Println(err)
	// Output:
	// 144 pump-3 7 pressure [1.5 2] <nil>
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
