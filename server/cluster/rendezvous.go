// View and rendezvous hashing: which member owns a device. Every process
// must compute the same owner from the same member list, so the hashes
// have no seed: FNV-1a 64 of the bytes, then splitmix64's finalizer.

package cluster

import (
	"slices"
	"time"
)

// View is one immutable membership list. Membership replaces the whole
// View on a change, so a caller that loads it once per request sees one
// consistent list. Do not modify a View's fields.
type View struct {
	Self    string    // this pod's address, as Options.Self after parsing
	Members []string  // sorted, unique; Self is among them only if the source lists it (and Leave was not called)
	Changed time.Time // when this view was installed; zero for the initial empty view
	Seq     uint64    // 0 for the initial empty view, +1 with each change

	// hashes[i] is mixedHash(Members[i]), computed once so Owner hashes
	// only the device. Views built as literals have none; Owner then
	// hashes members per call (correct, slower).
	hashes []uint64
	// past holds the views before this one, newest first (at most
	// keepPast, each with no past of its own): where a device's state was
	// before the latest changes (see Sources).
	past []*View
}

// keepPast is how many earlier views a View remembers for Sources: a
// handoff asks the owners of a few recent views, not of all history.
const keepPast = 3

// follow returns v installed after old: v remembers old and old's past.
func (v *View) follow(old *View) *View {
	o := *old
	o.past = nil
	v.past = append([]*View{&o}, old.past[:min(len(old.past), keepPast-1)]...)
	return v
}

// Sources appends to dst the members other than Self that may hold
// device's state, in the order to ask them: its owner in each earlier view
// this one remembers (newest first), then every member of listed (the
// peer source's list, suspected members too) in descending weight for
// device, which is where it was before Self joined, whoever joined with
// Self. Each member appears once. Callers bound how many they ask.
func (v *View) Sources(device []byte, listed []string, dst []string) []string {
	add := func(m string) {
		if m != "" && m != v.Self && !slices.Contains(dst, m) {
			dst = append(dst, m)
		}
	}
	for _, p := range v.past {
		add(p.Owner(device))
	}
	all := NewView(v.Self, listed)
	for _, m := range all.Rank(device, len(all.Members), nil) {
		add(m)
	}
	return dst
}

// NewView returns a view of members (sorted and deduplicated here, taken
// as given otherwise) with Seq 0. Membership builds its views with it;
// callers may too, to test code that routes by a View.
func NewView(self string, members []string) *View {
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	v := &View{Self: self, Members: ms, hashes: make([]uint64, len(ms))}
	for i, m := range ms {
		v.hashes[i] = mixedHash(m)
	}
	return v
}

// Owner returns the member with the highest weight mix(h(device) ^
// h(member)), or "" if the view has no members. Adding a member moves to
// it only the devices it now wins, about 1/(N+1) of them, and removing one
// moves only its own devices: no ring, no virtual nodes, and O(N) per call,
// which for tens of members is a few nanoseconds each.
func (v *View) Owner(device []byte) string {
	switch len(v.Members) {
	case 0:
		return ""
	case 1:
		return v.Members[0]
	}
	hd := hashBytes(device)
	hs := v.hashes
	if len(hs) != len(v.Members) {
		hs = nil // a literal View: hash members as we go
	}
	best, bw := 0, uint64(0)
	for i, m := range v.Members {
		var hm uint64
		if hs != nil {
			hm = hs[i]
		} else {
			hm = mixedHash(m)
		}
		// Strictly greater after the first: equal weights (only for
		// equal member hashes) go to the first in sorted order, in
		// every process.
		if w := mix(hd ^ hm); w > bw || i == 0 {
			best, bw = i, w
		}
	}
	return v.Members[best]
}

// Rank appends to dst the first n members in descending weight for
// device (all of them if n exceeds the view), and returns it. Rank(d, 1,
// nil)[0] is Owner(d); the second is the owner d would have without the
// first, which is where a device went when its owner left. It costs n
// passes over the members, so keep n small.
func (v *View) Rank(device []byte, n int, dst []string) []string {
	n = min(n, len(v.Members))
	if n <= 0 {
		return dst
	}
	hd := hashBytes(device)
	var pw uint64 // weight of the previous pick
	pi := -1      // index of the previous pick; -1 before the first
	for range n {
		best, bw := -1, uint64(0)
		for i := range v.Members {
			w := v.weight(hd, i)
			// Skip the members already picked: those ranking at or
			// before the previous pick in (weight desc, index asc).
			if pi >= 0 && (w > pw || w == pw && i <= pi) {
				continue
			}
			if best < 0 || w > bw {
				best, bw = i, w
			}
		}
		dst = append(dst, v.Members[best])
		pw, pi = bw, best
	}
	return dst
}

func (v *View) weight(hd uint64, i int) uint64 {
	if len(v.hashes) == len(v.Members) {
		return mix(hd ^ v.hashes[i])
	}
	return mix(hd ^ mixedHash(v.Members[i]))
}

// HasSelf reports whether Self is a member: false before this pod's
// address is listed by the source, and after Leave.
func (v *View) HasSelf() bool {
	_, ok := slices.BinarySearch(v.Members, v.Self)
	return ok
}

// Diff returns the members of v not in old (joined) and those of old not
// in v (left), each sorted; nil old counts as empty.
func (v *View) Diff(old *View) (joined, left []string) {
	var o []string
	if old != nil {
		o = old.Members
	}
	a, b := v.Members, o
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && a[0] < b[0]:
			joined = append(joined, a[0])
			a = a[1:]
		case len(a) == 0 || b[0] < a[0]:
			left = append(left, b[0])
			b = b[1:]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return joined, left
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// hashBytes is FNV-1a 64, written out because hash/fnv allocates.
func hashBytes(b []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// mixedHash hashes a member address. The mix spreads addresses that differ
// in one character (10.0.0.1, 10.0.0.2) over all 64 bits.
func mixedHash(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix(h)
}

// mix is splitmix64's finalizer: a bijection in which every input bit
// flips each output bit with probability about 1/2, so the weights of one
// device across members behave as independent draws even though FNV-1a of
// similar device IDs differs mostly in a few bits.
func mix(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	z ^= z >> 31
	return z
}
