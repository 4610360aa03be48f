package detect_test

import (
	"fmt"

	"ai-load-service/shard/detect"
)

func ExampleWindow() {
	w := detect.NewWindow(3)
	for _, x := range []float64{1e9 + 1, 1e9 + 2, 1e9 + 3, 1e9 + 4} {
		w.Push(x)
	}
	mean, sd := w.Stats()
	fmt.Printf("values=%v mean=%.1f stddev=%.6f\n", w.Values(nil), mean, sd)
	// Output:
	// values=[1.000000002e+09 1.000000003e+09 1.000000004e+09] mean=1000000003.0 stddev=0.816497
}

func ExampleStream_Observe() {
	p := detect.Params{Kind: detect.ZScore, Window: 10, MinSamples: 3, Threshold: 3, MinStddev: 1e-9}
	st := detect.NewStream(10)
	for _, x := range []float64{10, 12, 10, 12} {
		st.Observe(x, 0, &p)
	}
	sc := st.Observe(20, 0, &p)
	fmt.Printf("z=%g anomaly=%v count=%d\n", sc.Z, sc.Alert, st.Count)
	// Output:
	// z=9 anomaly=true count=5
}

func ExampleParseRules() {
	def := detect.Params{Kind: detect.Winsor, Window: 50, MinSamples: 10, Threshold: 4, MinStddev: 1e-9, Cooldown: 50}
	rules, err := detect.ParseRules([]byte(`{"rules": [{"match": "temp*", "detector": "ewma", "window": 100}]}`), def)
	fmt.Println(rules[0].Match, rules[0].Params.Kind, rules[0].Params.Window, rules[0].Params.Threshold, err)
	_, err = detect.ParseRules([]byte(`{"rules": [{"match": "hum", "window": 1}]}`), def)
	fmt.Println(err)
	// Output:
	// temp* ewma 100 4 <nil>
	// detector config rule 1 (match "hum"): window=1: want 2 to 100000
}
