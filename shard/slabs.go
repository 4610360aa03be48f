package shard

import (
	"math"
	"unsafe"

	"ai-load-service/shard/detect"
)

// slabs hands out a shard's device structs, stream arrays and window rings,
// carved from large slabs, so that they sit densely together instead of
// wherever the allocator put each one. With a large fleet every access to
// them is a cache miss; in big slabs advised as huge pages (Linux) it is
// not also a TLB miss, which CPU profiles showed to be most of
// detect.Window.Push's cost at 10k devices.
//
// slabs belong to one shard and are used by its goroutine alone. What
// dropped devices used is kept for reuse, not returned to the Go heap:
// memory stays at the fleet's high-water mark, as with the device map.
type slabs[T any] struct {
	slab  []T           // unused rest of the current slab
	spare []T           // a big slab's part before its huge-page boundary, used next
	small int           // bytes in small slabs so far
	big   int           // bytes in big slabs so far
	free  map[int][][]T // returned arrays by capacity, cleared
}

const (
	hugePage  = 2 << 20
	firstSlab = 64 << 10     // bytes, so small fleets pay little
	smallMax  = 256 << 10    // bytes in small slabs before big ones start
	maxBig    = 4 * hugePage // bytes advised as huge pages per big slab, at most
	maxShared = hugePage / 8 // bytes: bigger arrays come from the Go heap
)

// get returns a zeroed array of capacity n, length 0.
func (s *slabs[T]) get(n int) []T {
	if f := s.free[n]; len(f) > 0 {
		v := f[len(f)-1]
		s.free[n] = f[:len(f)-1]
		return v[:0]
	}
	size := int(unsafe.Sizeof(*new(T)))
	if n*size > maxShared {
		return make([]T, 0, n)
	}
	if len(s.slab) < n {
		s.slab, s.spare = s.spare, nil
	}
	if len(s.slab) < n {
		s.grow(size, n*size)
	}
	v := s.slab[:0:n]
	s.slab = s.slab[n:]
	return v
}

// grow starts a new slab of at least need bytes: small ones at first, then
// big ones (growing from one huge page to maxBig, as the shard's fleet does)
// whose huge-page aligned part is used first and advised as huge pages.
// need is at most maxShared, which every big slab holds.
func (s *slabs[T]) grow(size, need int) {
	if s.small < smallMax {
		// A small slab doubles the small bytes so far, but must also hold
		// the array asked for: one of 64-256 KiB can need more than the
		// next small slab would have (WINDOW_SIZE 8193-32768 crashed here).
		n := max(firstSlab, s.small, need)
		s.small += n
		s.slab = make([]T, n/size)
		return
	}
	n := min(max(hugePage, s.big/hugePage*hugePage), maxBig)
	s.big += n
	big := make([]T, (n+hugePage)/size+1)
	gap := int((hugePage - uintptr(unsafe.Pointer(&big[0]))%hugePage) % hugePage)
	off := (gap + size - 1) / size
	s.slab, s.spare = big[off:], big[:off]
	adviseHuge(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(&big[0]), gap)), n))
}

// put takes back an array nothing uses any more.
func (s *slabs[T]) put(v []T) {
	if cap(v) == 0 || cap(v)*int(unsafe.Sizeof(*new(T))) > maxShared {
		return
	}
	v = v[:cap(v)]
	clear(v)
	if s.free == nil {
		s.free = make(map[int][][]T)
	}
	s.free[cap(v)] = append(s.free[cap(v)], v)
}

// release gives back d's streams and their rings, which are being
// discarded, and leaves d without streams.
func (sh *shard) release(d *device) {
	for i := range d.streams {
		st := &d.streams[i]
		sh.putRing(st.Win.Buf(), st.Win.Cap())
		st.agg.add(-st.mean)
		st.agg.abs -= math.Abs(st.mean)
		if st.agg.streams--; st.agg.streams == 0 {
			delete(sh.names, st.name)
		}
	}
	sh.streamArrays.put(d.streams)
	d.streams = nil
}

// newDevice returns a zeroed device from the shard's slabs.
func (sh *shard) newDevice(id string, h uint64, next *device) *device {
	d := &sh.deviceSlab.get(1)[:1][0]
	d.id, d.hash, d.next = id, h, next
	copy(d.head[:], id)
	return d
}

// freeDevice gives back d, already out of the device map.
func (sh *shard) freeDevice(d *device) {
	sh.release(d)
	sh.deviceSlab.put(unsafe.Slice(d, 1))
}

// firstRing is the capacity a window's ring starts with (512 bytes). It
// doubles as values arrive, up to W, so memory follows the values a stream
// holds: with every ring allocated at W up front, W=100000 under eviction
// churn reached 24 GB before it held much. Windows up to firstRing (the
// default W=50) are allocated whole at once: growing them in steps left
// the smaller rings unused in the slabs when a whole fleet grew together
// (1,625 bytes per stream at W=50 against 814).
const firstRing = 64

// newRing returns an empty ring for a window of size values.
func (sh *shard) newRing(size int) detect.Window {
	return detect.NewWindowBuf(size, sh.rings.get(min(size, firstRing)))
}

// makeRoom gives w's ring room for n values (at most W), keeping its
// values, which are in order: a ring only wraps once full. First and full
// rings come from the slabs and go back to them; the sizes in between come
// from the Go heap and go back to the garbage collector. A fleet whose
// windows fill together would otherwise leave every stream's outgrown
// rings unused in the slabs: at W=1000, ~1 KB of rings per 1 KB held.
func (sh *shard) makeRoom(w *detect.Window, n int) {
	old := w.Buf()
	if n <= cap(old) {
		return
	}
	c := min(max(n, 2*cap(old)), w.Cap())
	var grown []float64
	if c == w.Cap() {
		grown = sh.rings.get(c)
	} else {
		grown = make([]float64, 0, c)
	}
	w.Grow(grown)
	sh.putRing(old, w.Cap())
}

// putRing gives back a ring of a window of size values: to the slabs when
// it is a first or full ring, else to the garbage collector.
func (sh *shard) putRing(v []float64, size int) {
	if c := cap(v); c == size || c == min(size, firstRing) {
		sh.rings.put(v)
	}
}

// room makes sure w can take one more value without Go growing its slice.
func (sh *shard) room(w *detect.Window) {
	if r := w.Buf(); len(r) == cap(r) && len(r) < w.Cap() {
		sh.makeRoom(w, len(r)+1)
	}
}
