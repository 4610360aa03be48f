package detect

import (
	"bufio"
	"compress/gzip"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// nabDir is where the benchmark is: NAB_DIR, or the copy beside the repo.
func nabDir() string {
	if d := os.Getenv("NAB_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "..", "shared", "nab")
}

// loadNABOrSkip loads NAB, skipping the test when there is none: the data
// is not in the repo (see docs/detection.md for how to get it).
func loadNABOrSkip(tb testing.TB) *NAB {
	tb.Helper()
	n, err := LoadNAB(nabDir())
	if errors.Is(err, ErrNoNAB) {
		tb.Skipf("no NAB data (%v); set NAB_DIR to a checkout of github.com/numenta/NAB", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// scoreAll sums detect(f) over every file and normalises per profile.
func scoreAll(n *NAB, detect func(f *NABFile) []int) []float64 {
	out := make([]float64, len(n.Profiles))
	for k, p := range n.Profiles {
		var sum FileScore
		for i := range n.Files {
			sum.Add(n.Files[i].Score(detect(&n.Files[i]), p))
		}
		out[k] = sum.Normalized()
	}
	return out
}

// TestNABScorerBaselines: never firing scores 0, firing at every window's
// first row scores 100, under every profile.
func TestNABScorerBaselines(t *testing.T) {
	n := loadNABOrSkip(t)
	if len(n.Files) != 58 {
		t.Errorf("%d files, want NAB's 58", len(n.Files))
	}
	null := scoreAll(n, func(*NABFile) []int { return nil })
	perfect := scoreAll(n, func(f *NABFile) []int {
		var d []int
		for _, w := range f.Windows {
			d = append(d, max(w[0], f.Probation()))
		}
		return d
	})
	for k, p := range n.Profiles {
		if null[k] != 0 || math.Abs(perfect[k]-100) > 1e-9 {
			t.Errorf("%s: null %.4f perfect %.4f, want 0 and 100", p.Name, null[k], perfect[k])
		}
	}
}

// TestNABScorerMatchesPublished scores NAB's own raw scores of its
// windowedGaussian detector cut at its published threshold (1.0) and must
// give its published 39.65 / 20.87 / 47.41.
func TestNABScorerMatchesPublished(t *testing.T) {
	n := loadNABOrSkip(t)
	fh, err := os.Open(filepath.Join(nabDir(), "results", "windowedGaussian_scores.csv.gz"))
	if err != nil {
		t.Skipf("no published raw scores: %v", err)
	}
	defer fh.Close()
	zr, err := gzip.NewReader(fh)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]float64{}
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ",")
		if len(parts) != 3 || parts[0] == "file" {
			continue
		}
		v, err := strconv.ParseFloat(parts[2], 64)
		if err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		rows[parts[0]] = append(rows[parts[0]], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	got := scoreAll(n, func(f *NABFile) []int {
		scores := rows[f.Name]
		if len(scores) != len(f.TS) {
			t.Fatalf("%s: %d scores for %d rows", f.Name, len(scores), len(f.TS))
		}
		var d []int
		for i, s := range scores {
			if s >= 1.0 {
				d = append(d, i)
			}
		}
		return d
	})
	want := []float64{39.65, 20.87, 47.41}
	for k, p := range n.Profiles {
		if math.Abs(got[k]-want[k]) > 0.005 {
			t.Errorf("%s: %.4f, want the published %.2f", p.Name, got[k], want[k])
		}
	}
	t.Logf("windowedGaussian: %.2f / %.2f / %.2f", got[0], got[1], got[2])
}
