package shard

import "unsafe"

// rings hands out window rings carved from large slabs, so that a shard's
// rings sit densely together instead of wherever the allocator put each
// stream. With a large fleet every ring access is a cache miss; in big
// slabs advised as huge pages (Linux) it is not also a TLB miss, which
// CPU profiles showed to be most of Window.Push's cost at 10k devices.
//
// A rings belongs to one shard and is used by its goroutine alone. Rings of
// dropped devices are kept for reuse, not returned to the Go heap: memory
// stays at the fleet's high-water mark, as with the device map itself.
type rings struct {
	slab  []float64           // unused rest of the current slab
	spare []float64           // a big slab's part before its huge-page boundary, used next
	small int                 // floats in the small slabs so far
	free  map[int][][]float64 // returned rings by capacity
}

const (
	firstSlab  = 8 << 10  // floats: 64 KiB, so small fleets pay little
	smallMax   = 32 << 10 // floats in small slabs before big ones start
	hugeFloats = hugePage / 8
	bigSlab    = 4 * hugeFloats // floats: 8 MiB, four huge pages
)

// get returns an empty ring of capacity n.
func (r *rings) get(n int) []float64 {
	if f := r.free[n]; len(f) > 0 {
		v := f[len(f)-1]
		r.free[n] = f[:len(f)-1]
		return v[:0]
	}
	if n > hugeFloats/8 {
		return make([]float64, 0, n) // too big to share a slab usefully
	}
	if len(r.slab) < n {
		r.slab, r.spare = r.spare, nil
	}
	if len(r.slab) < n {
		r.grow()
	}
	v := r.slab[:0:n]
	r.slab = r.slab[n:]
	return v
}

// grow starts a new slab: small ones at first, then big ones whose huge-page
// aligned part is used first and advised as huge pages.
func (r *rings) grow() {
	if r.small < smallMax {
		n := max(firstSlab, r.small)
		r.small += n
		r.slab = make([]float64, n)
		return
	}
	big := make([]float64, bigSlab+hugeFloats)
	off := int((hugePage - uintptr(unsafe.Pointer(&big[0]))%hugePage) % hugePage / 8)
	r.slab, r.spare = big[off:], big[:off]
	adviseHuge(unsafe.Slice((*byte)(unsafe.Pointer(&r.slab[0])), 8*bigSlab))
}

const hugePage = 2 << 20

// put takes back a ring no stream uses any more.
func (r *rings) put(v []float64) {
	if cap(v) == 0 || cap(v) > hugeFloats/8 {
		return
	}
	if r.free == nil {
		r.free = make(map[int][][]float64)
	}
	r.free[cap(v)] = append(r.free[cap(v)], v)
}

// release returns the rings of d's streams, which are being discarded.
func (r *rings) release(d *device) {
	for i := range d.streams {
		r.put(d.streams[i].Win.vals)
		d.streams[i].Win.vals = nil
	}
}
