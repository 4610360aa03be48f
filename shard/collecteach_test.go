package shard

import (
	"bytes"
	"fmt"
	"testing"
)

// TestCollectEachBuffers: CollectEach hands each chunk in memory the next
// chunk reuses while each returns true (the point: a round allocates one
// chunk's worth, not a fleet's), and in new memory after each returns
// false, leaving the last chunk's bytes as they were (a write that timed
// out may still send them). Every snapshot equals the device's own
// encoding either way.
func TestCollectEachBuffers(t *testing.T) {
	for _, reuse := range []bool{true, false} {
		t.Run(fmt.Sprint("reuse=", reuse), func(t *testing.T) {
			s := MustNewSet(t, Options{Shards: 1, Store: newMemStore()})
			const devices = 3 * collectChunk
			b := new(Batch)
			for d := range devices {
				b.Add(fmt.Appendf(nil, "dev-%d", d), 1)
				b.AddMetric([]byte("m"), float64(d))
			}
			if err := s.Ingest(b); err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{}
			for _, first := range s.shards[0].devices {
				for d := first; d != nil; d = d.next {
					d.gen++ // what the collect will give it
					want[d.id] = d.encode()
					d.gen--
				}
			}
			type held struct {
				data, copy []byte
			}
			var chunks [][]held
			seen := 0
			if _, err := s.CollectEach(false, func(snaps []Encoded) bool {
				var c []held
				for _, e := range snaps {
					if !bytes.Equal(e.Data, want[e.Device]) {
						t.Errorf("%s: snapshot differs from its encoding", e.Device)
					}
					c = append(c, held{e.Data, bytes.Clone(e.Data)})
				}
				chunks = append(chunks, c)
				seen += len(snaps)
				return reuse
			}); err != nil {
				t.Fatal(err)
			}
			if seen != devices || len(chunks) != 3 {
				t.Fatalf("%d snapshots in %d chunks; want %d in 3", seen, len(chunks), devices)
			}
			first, second := chunks[0][0].data, chunks[1][0].data
			if shared := &first[:1][0] == &second[:1][0]; shared != reuse {
				t.Fatalf("second chunk in the first's memory: %v; want %v", shared, reuse)
			}
			if !reuse {
				for i, c := range chunks {
					for _, h := range c {
						if !bytes.Equal(h.data, h.copy) {
							t.Fatalf("chunk %d's bytes changed after each returned false", i)
						}
					}
				}
			}
		})
	}
}
