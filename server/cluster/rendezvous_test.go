package cluster

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"testing"
)

func members(n int) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("10.0.0.%d:8080", i+1)
	}
	return ms
}

func deviceIDs(n int) [][]byte {
	ids := make([][]byte, n)
	for i := range ids {
		ids[i] = []byte("dev-" + strconv.Itoa(i))
	}
	return ids
}

func TestOwnerAddMember(t *testing.T) {
	ids := deviceIDs(100_000)
	for n := 3; n <= 10; n++ {
		before := NewView("", members(n))
		added := fmt.Sprintf("10.0.1.%d:8080", n)
		after := NewView("", append(members(n), added))
		moved := 0
		for _, id := range ids {
			o, a := before.Owner(id), after.Owner(id)
			if o == a {
				continue
			}
			moved++
			if a != added {
				t.Fatalf("n=%d: device %s moved from %s to %s; want only moves to the new member %s", n, id, o, a, added)
			}
		}
		want := float64(len(ids)) / float64(n+1)
		if f := float64(moved); f < 0.8*want || f > 1.2*want {
			t.Fatalf("n=%d: unexpected moved devices; got %d; want %.0f ±20%%", n, moved, want)
		}
		owned := map[string]int{}
		for _, id := range ids {
			owned[after.Owner(id)]++
		}
		for _, m := range after.Members {
			if f := float64(owned[m]); f < 0.9*want || f > 1.1*want {
				t.Fatalf("n=%d: unbalanced owner %s; got %d devices; want %.0f ±10%%", n, m, owned[m], want)
			}
		}
	}
}

func TestOwnerRemoveMember(t *testing.T) {
	ids := deviceIDs(100_000)
	for n := 3; n <= 10; n++ {
		before := NewView("", members(n+1))
		gone := before.Members[n/2]
		after := NewView("", slices.Delete(slices.Clone(before.Members), n/2, n/2+1))
		moved := 0
		for _, id := range ids {
			o, a := before.Owner(id), after.Owner(id)
			if o == gone {
				moved++
				continue
			}
			if o != a {
				t.Fatalf("n=%d: device %s moved from %s to %s though only %s left", n, id, o, a, gone)
			}
		}
		want := float64(len(ids)) / float64(n+1)
		if f := float64(moved); f < 0.8*want || f > 1.2*want {
			t.Fatalf("n=%d: unexpected devices of the removed member; got %d; want %.0f ±20%%", n, moved, want)
		}
	}
}

// TestOwnerFixed pins owners, so that a change to the hashes, which would
// split a cluster running two versions, fails here first.
func TestOwnerFixed(t *testing.T) {
	v := NewView("", []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "[fd00::7]:8080", "pod-4.peers:8080"})
	f := func(device, want string) {
		t.Helper()
		if got := v.Owner([]byte(device)); got != want {
			t.Fatalf("unexpected owner of %q; got %q; want %q", device, got, want)
		}
	}
	f("", "[fd00::7]:8080")
	f("dev-0", "10.0.0.2:8080")
	f("dev-1", "pod-4.peers:8080")
	f("dev-2", "10.0.0.2:8080")
	f("sensor/42", "[fd00::7]:8080")
	f("0123456789abcdef0123456789abcdef", "10.0.0.3:8080")
	f("Ünïcode-device", "pod-4.peers:8080")
}

// The hashes are the published algorithms, so another implementation can
// route like this one.
func TestHashes(t *testing.T) {
	for _, s := range []string{"", "a", "dev-42", "10.0.0.1:8080"} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := hashBytes([]byte(s)), h.Sum64(); got != want {
			t.Fatalf("unexpected hashBytes(%q); got %#x; want FNV-1a 64 %#x", s, got, want)
		}
		if got, want := mixedHash(s), mix(h.Sum64()); got != want {
			t.Fatalf("unexpected mixedHash(%q); got %#x; want %#x", s, got, want)
		}
	}
	// splitmix64's first output from seed 0: mix(0 + golden gamma).
	if got, want := mix(0x9e3779b97f4a7c15), uint64(0xe220a8397b1dcdaf); got != want {
		t.Fatalf("unexpected mix; got %#x; want %#x", got, want)
	}
}

func TestOwnerEmpty(t *testing.T) {
	for _, v := range []*View{NewView("a:1", nil), {}} {
		if got := v.Owner([]byte("dev")); got != "" {
			t.Fatalf("unexpected owner in an empty view; got %q; want \"\"", got)
		}
		if got := v.Rank([]byte("dev"), 3, nil); len(got) != 0 {
			t.Fatalf("unexpected rank in an empty view; got %q; want none", got)
		}
	}
}

// A View written as a literal has no cached hashes; it must agree with one
// from NewView.
func TestOwnerLiteralView(t *testing.T) {
	built := NewView("", members(7))
	literal := &View{Members: built.Members}
	for _, id := range deviceIDs(1000) {
		if a, b := built.Owner(id), literal.Owner(id); a != b {
			t.Fatalf("unexpected owner of %s in a literal view; got %s; want %s", id, b, a)
		}
		if a, b := built.Rank(id, 7, nil), literal.Rank(id, 7, nil); !slices.Equal(a, b) {
			t.Fatalf("unexpected rank of %s in a literal view; got %q; want %q", id, b, a)
		}
	}
}

func TestRank(t *testing.T) {
	v := NewView("", members(6))
	for _, id := range deviceIDs(2000) {
		all := v.Rank(id, 10, nil)
		if len(all) != 6 {
			t.Fatalf("unexpected rank length for n > members; got %d; want 6", len(all))
		}
		sorted := slices.Sorted(slices.Values(all))
		if !slices.Equal(sorted, v.Members) {
			t.Fatalf("rank of %s is not a permutation of the members; got %q", id, all)
		}
		if all[0] != v.Owner(id) {
			t.Fatalf("unexpected first rank of %s; got %s; want the owner %s", id, all[0], v.Owner(id))
		}
		// The second is the owner once the first leaves.
		without := NewView("", slices.DeleteFunc(slices.Clone(v.Members), func(m string) bool { return m == all[0] }))
		if all[1] != without.Owner(id) {
			t.Fatalf("unexpected second rank of %s; got %s; want %s", id, all[1], without.Owner(id))
		}
		if got := v.Rank(id, 2, []string{"x"}); !slices.Equal(got, []string{"x", all[0], all[1]}) {
			t.Fatalf("unexpected Rank(2) appended to dst; got %q; want %q", got, []string{"x", all[0], all[1]})
		}
		if got := v.Rank(id, 0, nil); got != nil {
			t.Fatalf("unexpected Rank(0); got %q; want nil", got)
		}
	}
}

// Equal member hashes cannot come from distinct addresses in practice, so
// fake them to check that ties go to the first member in every process.
func TestOwnerTie(t *testing.T) {
	v := &View{Members: []string{"a:1", "b:1", "c:1"}, hashes: []uint64{7, 7, 7}}
	if got := v.Owner([]byte("dev")); got != "a:1" {
		t.Fatalf("unexpected owner on a tie; got %s; want a:1", got)
	}
	if got := v.Rank([]byte("dev"), 3, nil); !slices.Equal(got, v.Members) {
		t.Fatalf("unexpected rank on a tie; got %q; want %q", got, v.Members)
	}
}

func TestDiff(t *testing.T) {
	f := func(old, cur, joined, left []string) {
		t.Helper()
		var o *View
		if old != nil {
			o = NewView("", old)
		}
		j, l := NewView("", cur).Diff(o)
		if !slices.Equal(j, joined) || !slices.Equal(l, left) {
			t.Fatalf("unexpected diff of %q from %q; got joined %q, left %q; want %q, %q", cur, old, j, l, joined, left)
		}
	}
	f(nil, nil, nil, nil)
	f(nil, []string{"a:1", "b:1"}, []string{"a:1", "b:1"}, nil)
	f([]string{"a:1", "b:1"}, nil, nil, []string{"a:1", "b:1"})
	f([]string{"a:1", "b:1"}, []string{"a:1", "b:1"}, nil, nil)
	f([]string{"a:1", "c:1"}, []string{"b:1", "c:1", "d:1"}, []string{"b:1", "d:1"}, []string{"a:1"})
	f([]string{"b:1"}, []string{"a:1", "c:1"}, []string{"a:1", "c:1"}, []string{"b:1"})
}

func TestHasSelf(t *testing.T) {
	f := func(self string, ms []string, want bool) {
		t.Helper()
		if got := NewView(self, ms).HasSelf(); got != want {
			t.Fatalf("unexpected HasSelf for %q in %q; got %v; want %v", self, ms, got, want)
		}
	}
	f("a:1", nil, false)
	f("a:1", []string{"a:1"}, true)
	f("b:1", []string{"c:1", "a:1", "b:1"}, true)
	f("b:2", []string{"a:1", "b:1"}, false)
	f("", []string{"a:1"}, false)
}

func BenchmarkOwner1(b *testing.B)  { benchmarkOwner(b, 1) }
func BenchmarkOwner3(b *testing.B)  { benchmarkOwner(b, 3) }
func BenchmarkOwner10(b *testing.B) { benchmarkOwner(b, 10) }

func benchmarkOwner(b *testing.B, n int) {
	v := NewView("", members(n))
	ids := deviceIDs(1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if v.Owner(ids[i&1023]) == "" {
			b.Fatal("no owner")
		}
		i++
	}
}

func BenchmarkRank2of10(b *testing.B) {
	v := NewView("", members(10))
	ids := deviceIDs(1024)
	dst := make([]string, 0, 2)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst = v.Rank(ids[i&1023], 2, dst[:0])
		i++
	}
}

// TestSources: a member taking a device over asks where its state was
// (every listed member, by weight, so also past any others that joined with it):
// after a scale-out, the owner before the new member joined; after a
// scale-in, the member that left (it may still be handing over); and,
// for a member's first view, the owner it would have without this member.
func TestSources(t *testing.T) {
	abc := []string{"a:1", "b:1", "c:1"}
	abcd := append(slices.Clone(abc), "d:1")
	checked := 0
	for i := range 2000 {
		dev := []byte(fmt.Sprintf("dev-%d", i))
		// Scale-out, seen by the new member d from its first view.
		first := NewView("d:1", abcd).follow(NewView("d:1", nil))
		before := NewView("", abc).Owner(dev)
		if first.Owner(dev) == "d:1" {
			if got := first.Sources(dev, abcd, nil); len(got) == 0 || got[0] != before {
				t.Fatalf("%s: d's first view asks %v; want %s first", dev, got, before)
			}
			checked++
		}
		// Scale-in: d leaves; the new owner asks d first.
		four := NewView(before, abcd)
		three := NewView(before, abc).follow(four)
		if four.Owner(dev) == "d:1" {
			if got := three.Sources(dev, abc, nil); len(got) == 0 || got[0] != "d:1" {
				t.Fatalf("%s: after d left, %s asks %v; want d:1 first", dev, before, got)
			}
			checked++
		}
		for _, m := range three.Sources(dev, abcd, []string{"hint:1"}) {
			if m == three.Self {
				t.Fatalf("%s: Sources lists self", dev)
			}
		}
	}
	if checked < 500 {
		t.Fatalf("only %d cases checked", checked)
	}
}

// TestViewsRememberThePast: a view keeps the last keepPast views before it,
// newest first, and no chain beyond.
func TestViewsRememberThePast(t *testing.T) {
	v := NewView("a:1", nil)
	for i := range 6 {
		v = NewView("a:1", []string{"a:1", fmt.Sprintf("m%d:1", i)}).follow(v)
	}
	if len(v.past) != keepPast || v.past[0].Members[1] != "m4:1" || v.past[2].Members[1] != "m2:1" {
		t.Fatalf("past %v", v.past)
	}
	for _, p := range v.past {
		if p.past != nil {
			t.Fatal("a past view keeps its own past: the chain grows without end")
		}
	}
}
