package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"ai-load-service/shard"
	"ai-load-service/shard/detect"
)

// loadNAB loads the Numenta Anomaly Benchmark from NAB_DIR or the copy
// beside the repo, skipping when there is none: the data is not in the
// repo (docs/detection.md says how to get it).
func loadNAB(t *testing.T) *detect.NAB {
	t.Helper()
	dir := os.Getenv("NAB_DIR")
	if dir == "" {
		dir = filepath.Join("..", "shared", "nab")
	}
	n, err := detect.LoadNAB(dir)
	if errors.Is(err, detect.ErrNoNAB) {
		t.Skipf("no NAB data (%v); set NAB_DIR to a checkout of github.com/numenta/NAB", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// nabBatches yields file i's rows as ingest bodies of at most per samples,
// device "nab-<i>", metric "value", ts the NAB timestamp. A body never
// holds two rows with the same ts and value, so each alert in a response
// names exactly one row (NAB repeats some: ec2_disk_write_bytes_1ef3de's
// rows 2118-2129 are all "2014-03-09 03:00:00,0.0").
func nabBatches(i int, f *detect.NABFile, per int, yield func(lo int, body string)) {
	type row struct {
		ts int64
		v  float64
	}
	var b strings.Builder
	seen := map[row]bool{}
	for lo := 0; lo < len(f.TS); {
		b.Reset()
		clear(seen)
		b.WriteByte('[')
		j := lo
		for ; j < min(lo+per, len(f.TS)) && !seen[row{f.TS[j], f.Values[j]}]; j++ {
			seen[row{f.TS[j], f.Values[j]}] = true
			if j > lo {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"device":"nab-%d","ts":%d,"metrics":{"value":%s}}`, i, f.TS[j], strconv.FormatFloat(f.Values[j], 'g', -1, 64))
		}
		b.WriteByte(']')
		yield(lo, b.String())
		lo = j
	}
}

// TestNABLive streams every NAB file through a running service's ingest
// route, one device per file, with the default detector (ranges) and with
// DETECTOR=winsor Z_THRESHOLD=4 (the default before ranges), and scores the
// alerts the responses list. They must be exactly the alerts of an
// in-process shard.Set with the same options (so `make eval-nab`'s library
// run measures what the service does), and the default must score what
// TestRangesNAB measured.
func TestNABLive(t *testing.T) {
	n := loadNAB(t)
	bin := buildService(t)
	for _, c := range []struct {
		name string
		env  []string
		opts shard.Options
		want [3]float64 // 0: only reported
	}{
		{"default", nil, shard.Options{}, [3]float64{68.20, 58.35, 73.34}},
		{"winsor", []string{"DETECTOR=winsor", "Z_THRESHOLD=4"}, shard.Options{Detector: detect.Winsor, ZThreshold: 4}, [3]float64{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := nabLive(t, n, startService(t, bin, c.env...), c.opts)
			t.Logf("%s through the API: standard %.2f, reward_low_FP_rate %.2f, reward_low_FN_rate %.2f (even files %.2f, odd %.2f); %d alerts, %d outside windows, %d of %d windows detected",
				c.name, r.All[0], r.All[1], r.All[2], r.Even[0], r.Odd[0], r.Alerts, r.FP, r.Detected, r.Windows)
			real := len(n.Files) == 58 && r.Windows == 116 // the scores are NAB's own, not another NAB_DIR's
			for k, w := range c.want {
				if real && w != 0 && math.Abs(r.All[k]-w) > 0.005 {
					t.Errorf("%s: %.2f, want %.2f", n.Profiles[k].Name, r.All[k], w)
				}
			}
		})
	}
}

// nabLive streams n through s and through an in-process Set with opts,
// fails on any difference in alerts, and scores the service's.
func nabLive(t *testing.T, n *detect.NAB, s *service, opts shard.Options) detect.Report {
	set := shard.New(opts)
	defer set.Stop()
	live := make([][]int, len(n.Files))
	lib := make([][]int, len(n.Files))
	var b shard.Batch
	for i := range n.Files {
		f := &n.Files[i]
		nabBatches(i, f, 1000, func(lo int, body string) {
			var resp struct {
				Anomalies []struct {
					Device string  `json:"device"`
					TS     int64   `json:"ts"`
					Value  float64 `json:"value"`
				} `json:"anomalies"`
			}
			if err := json.Unmarshal(s.post(t, body), &resp); err != nil {
				t.Fatal(err)
			}
			// Alerts come in sample order, and a body's (ts, value)
			// pairs are unique: each names one row.
			j := lo
			for _, a := range resp.Anomalies {
				for j < len(f.TS) && (f.TS[j] != a.TS || f.Values[j] != a.Value) {
					j++
				}
				if a.Device != fmt.Sprintf("nab-%d", i) || j == len(f.TS) {
					t.Fatalf("%s: alert %+v matches no row from %d", f.Name, a, lo)
				}
				live[i] = append(live[i], j)
				j++
			}
		})
		for j := range f.TS {
			b.Reset()
			b.Add([]byte(fmt.Sprintf("nab-%d", i)), f.TS[j])
			b.AddMetric([]byte("value"), f.Values[j])
			if err := set.Ingest(&b); err != nil {
				t.Fatal(err)
			}
			if len(b.Anomalies) > 0 {
				lib[i] = append(lib[i], j)
			}
		}
		if fmt.Sprint(live[i]) != fmt.Sprint(lib[i]) {
			t.Errorf("%s: the service alerted on rows %v, the library on %v", f.Name, live[i], lib[i])
		}
	}
	return n.Evaluate(live)
}
