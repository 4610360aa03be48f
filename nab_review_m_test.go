package main

// Hostile review M of TestNABLive and of the README's NAB paragraph.

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"
)

func reviewMNABDir() string {
	if d := os.Getenv("NAB_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "shared", "nab")
}

// TestReviewMREADMEPublishedScores: the README compares Ranges with
// "Published scores ...: windowedGaussian 39.7, Skyline 58.2, numenta HTM
// 70.1, ARTime 74.9". NAB's skyline scored 35.69; 58.20 is
// earthgeckoSkyline, a different detector.
func TestReviewMREADMEPublishedScores(t *testing.T) {
	pub, err := os.ReadFile(filepath.Join(reviewMNABDir(), "results", "final_results.json"))
	if err != nil {
		t.Skipf("no NAB results: %v", err)
	}
	var m map[string]map[string]float64
	if err := json.Unmarshal(pub, &m); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	_, after, ok := strings.Cut(text, "Published scores for comparison:")
	if !ok {
		t.Fatal(`README has no "Published scores for comparison:"`)
	}
	sentence, _, _ := strings.Cut(after, ". ")
	for _, mm := range regexp.MustCompile(`(\w+)(?: HTM)? (\d+\.\d)`).FindAllStringSubmatch(sentence, -1) {
		got, _ := strconv.ParseFloat(mm[2], 64)
		var key string
		for k := range m {
			if strings.EqualFold(k, mm[1]) {
				key = k
			}
		}
		if key == "" {
			t.Errorf("README names %q, which final_results.json does not list", mm[1])
			continue
		}
		if want := m[key]["standard"]; math.Abs(got-want) > 0.051 {
			t.Errorf("README: %q %.1f, but NAB's published %s standard score is %.2f", mm[1], got, key, want)
		}
	}
}

// TestReviewMNABLiveRowMatching: TestNABLive maps each alert in a response
// to "the next row with its ts and value" from the batch start, or after
// the previous alert. When two rows of a batch share ts and value (NAB has
// them: ec2_disk_write_bytes_1ef3de rows 2118-2129 are twelve rows of
// 2014-03-09 03:00:00,0.0; machine_temperature's timestamps step back 12
// rows), an alert on the later one is put on the earlier one. Here a file
// the service and the library agree on (both alert on row 401 and not on row
// 300, which has the same ts and value 53 and does not alert) makes TestNABLive
// fail with "the service alerted on rows [300], the library on [401]". The
// same mapping lets a service that alerts on row 401 pass against a
// library alerting on row 300: the check cannot see such a disagreement.
func TestReviewMNABLiveRowMatching(t *testing.T) {
	if os.Getenv("REVIEW_M_CHILD") != "" {
		t.Skip("child run")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var ts []int64
	var vs []float64
	t0 := time.Date(2014, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	for i := 0; i < 300; i++ {
		ts, vs = append(ts, t0+int64(i)*300000), append(vs, 50+rng.NormFloat64())
	}
	// Row 290 is a spike (since the ranges default): the ranges widen and
	// go quiet, so row 300 does not alert on them.
	vs[290] = 60
	T := ts[299] + 300000
	ts, vs = append(ts, T), append(vs, 53) // row 300: z about 3, no alert
	for i := 0; i < 100; i++ {             // quieter: no alert
		ts, vs = append(ts, T+int64(i+1)*300000), append(vs, 50+0.1*rng.NormFloat64())
	}
	ts, vs = append(ts, T), append(vs, 53) // row 401: the clock stepped back; z about 7, alert
	for i := 0; i < 50; i++ {
		ts, vs = append(ts, T+int64(i+101)*300000), append(vs, 50+0.1*rng.NormFloat64())
	}

	// Precondition: the library alerts on row 401 and not on row 300, as
	// TestNABLive runs it.
	set := shard.New(shard.Options{})
	var b shard.Batch
	var lib []int
	for j := range ts {
		b.Reset()
		b.Add([]byte("nab-0"), ts[j])
		b.AddMetric([]byte("value"), vs[j])
		if err := set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
		if len(b.Anomalies) > 0 {
			lib = append(lib, j)
		}
	}
	set.Stop()
	if !slices.Contains(lib, 401) || slices.Contains(lib, 300) {
		t.Fatalf("precondition: library alerts on %v, want 401 and not 300", lib)
	}

	dir := t.TempDir()
	for _, d := range []string{"labels", "config", "data/synthetic"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var csv strings.Builder
	csv.WriteString("timestamp,value\n")
	for j := range ts {
		fmt.Fprintf(&csv, "%s,%s\n", time.UnixMilli(ts[j]).UTC().Format("2006-01-02 15:04:05"), strconv.FormatFloat(vs[j], 'g', -1, 64))
	}
	files := map[string]string{
		"data/synthetic/repeat.csv":    csv.String(),
		"labels/combined_windows.json": `{"synthetic/repeat.csv": []}`,
		"config/profiles.json": `{"standard":{"CostMatrix":{"tpWeight":1,"fpWeight":0.11,"fnWeight":1}},
			"reward_low_FP_rate":{"CostMatrix":{"tpWeight":1,"fpWeight":0.22,"fnWeight":1}},
			"reward_low_FN_rate":{"CostMatrix":{"tpWeight":1,"fpWeight":0.11,"fnWeight":2}}}`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNABLive$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "NAB_DIR="+dir, "REVIEW_M_CHILD=1", "SERVICE_BIN="+buildService(t))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNABLive") {
		t.Errorf("TestNABLive fails on a file where the service and the library agree (the library alerts on row 401, not 300; "+
			"row 300 has the same ts and value): %v\n%s", err, out)
	}
}
