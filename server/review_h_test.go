package server

// Hostile review H of the cluster handoff after review G's fixes. Each
// test that fails shows a defect; its comment says what is wrong and what
// is expected. Pods are wired as main.go wires them (see startGPod in
// review_g_test.go, or startHPod here for a member with Redis).

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"ai-load-service/server/cluster"
)

// 1. TestReviewH_SuspicionGossipNeverExpires: a member that refused one
// connection is meant to be out of the view for suspectFor (5 s), "unless
// heard from" (forward.go:104). But every forwarded request carries the
// sender's Suspects() (forward.go:121), which lists every entry of the
// suspects map, expired or not (cluster/membership.go Suspects does not
// look at the deadline; only installLocked prunes, at a refresh), and the
// receiver's heard() calls Suspect(m, 5s) for each (forward.go:137), which
// sets a fresh deadline (membership.go Suspect). Two members forwarding to
// each other keep renewing each other's suspicion of a third, live member
// for as long as traffic flows: it is never back in their views, so it
// owns none of its devices on them and they hold its devices.
//
// Here X is down for one request at A (a restart on the same address),
// then up and healthy; A and B exchange ordinary forwarded traffic. Eight
// seconds later, after a refresh of both views, X must be back (nothing
// refused since).
func TestReviewH_SuspicionGossipNeverExpires(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a, b, x := addrs[0], addrs[1], addrs[2]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a, b, x)
	all, noX := []string{a, b, x}, []string{a, b}
	devX := gDevice("hx", []string{x}, all)
	devA := gDevice("ha", []string{a, a}, all, noX) // A's in both views
	devB := gDevice("hb", []string{b, b}, all, noX) // B's in both views
	pa := startGPod(t, a, file, gOpts{})
	pb := startGPod(t, b, file, gOpts{})
	// X is restarting: A's forward is refused once; A suspects X, and the
	// sample goes to X's successor.
	if code, out := post(t, a, gSample(devX, 1, 1)); code != 200 {
		t.Fatalf("sample for X's device at A while X is down: %d %s", code, out)
	}
	if !slices.Contains(pa.members.Suspects(), x) {
		t.Fatalf("A does not suspect X after X refused a connection; suspects %v", pa.members.Suspects())
	}
	refusedAt := time.Now()
	startGPod(t, x, file, gOpts{}) // X is back, healthy
	// Ordinary traffic between A and B: each forwards to the other.
	for ts := 2; time.Since(refusedAt) < 8*time.Second; ts++ {
		if code, out := post(t, a, gSample(devB, ts, 1)); code != 200 {
			t.Fatalf("sample at A: %d %s", code, out)
		}
		if code, out := post(t, b, gSample(devA, ts, 1)); code != 200 {
			t.Fatalf("sample at B: %d %s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pa.refresh(t)
	pb.refresh(t)
	for _, p := range []*gPod{pa, pb} {
		if v := p.members.View(); !slices.Contains(v.Members, x) {
			t.Fatalf("%s's view %v still leaves X out (suspects %v), %v after X's only refused connection and a refresh;\n"+
				"want X back after suspectFor (5s): A and B renew each other's suspicion of X through X-Aiload-Suspects on every forwarded request",
				p.addr, v.Members, p.members.Suspects(), time.Since(refusedAt).Round(time.Second))
		}
	}
}

// 2. TestReviewH_FourJoinAtOnceLosesState: review G's defect 2 (two pods
// joining at once) was fixed by asking the top four of the ranking
// (cluster/rendezvous.go sourceRank = 4, View.Sources). The ranking
// includes the asking pod itself, so only three others are asked, and a
// scale-out by four at once (1 → 5, or 2 → 6: kubectl scale, an HPA step)
// leaves out the old owner of every device that ranks fifth: the new
// owner, whose first view is the whole new cluster (no past view names
// the old owner), asks three newcomers that never held the device, gets
// 204 from each and starts it fresh. The old owner keeps its copy: the
// history is lost and two pods hold the device. Expected: the new owner
// finds the state wherever the device was held.
func TestReviewH_FourJoinAtOnceLosesState(t *testing.T) {
	addrs := freeAddrs(t, 5)
	a := addrs[0]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a)
	// A ranks last (fifth) for the device among all five.
	var dev string
	for i := 0; dev == ""; i++ {
		id := fmt.Sprint("fj", i)
		if r := cluster.NewView("", addrs).Rank([]byte(id), 5, nil); r[4] == a {
			dev = id
		}
	}
	owner := cluster.NewView("", addrs).Owner([]byte(dev))
	pa := startGPod(t, a, file, gOpts{})
	for i := range 20 {
		if code, out := post(t, a, gSample(dev, i+1, float64(i%3))); code != 200 {
			t.Fatalf("sample %d at A: %d %s", i+1, code, out)
		}
	}
	writePeers(t, file, addrs...) // four join at once
	pods := []*gPod{pa}
	var po *gPod
	for _, ad := range addrs[1:] {
		p := startGPod(t, ad, file, gOpts{})
		pods = append(pods, p)
		if ad == owner {
			po = p
		}
	}
	pa.refresh(t)
	if code, out := post(t, a, gSample(dev, 21, 1)); code != 200 { // A forwards it to the owner now
		t.Fatalf("sample 21 at A: %d %s", code, out)
	}
	held := 0
	for _, p := range pods {
		if gHeld(p, dev) {
			held++
		}
	}
	if got := gCount(po, dev); got != 21 || held != 1 {
		t.Fatalf("after 20 samples at A, four pods joining at once and a 21st sample: the new owner counts %d, want 21; pods holding the device %d, want 1 (A holds it: %v).\n"+
			"View.Sources asks the top %d of the ranking, the asking pod among them: A, fifth, is never asked and the device starts fresh",
			got, held, gHeld(pa, dev), 4)
	}
}
