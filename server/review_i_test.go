package server

// Hostile review I of the cluster handoff after review H's fixes (commit
// c2e88a0). Each test that fails shows a defect; its comment says what is
// wrong and what is expected. Pods are wired as main.go wires them (see
// startGPod in review_g_test.go, startHPod in review_h_test.go).

import (
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"ai-load-service/server/cluster"

	"github.com/valyala/fasthttp"
)

// iAged wraps a member's handler so that its handoff answers say it joined
// ten minutes ago: it stands for running the test two minutes (settle)
// later, which a test cannot wait for. (Since the fix the walk asks every
// member at once and no answer stops it early: the header, no longer
// sent by members, must change nothing.)
func iAged(api fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		api(ctx)
		if string(ctx.Path()) == handoffPath && ctx.Response.StatusCode() == fasthttp.StatusNoContent {
			ctx.Response.Header.Set("X-Aiload-Joined", strconv.FormatInt(time.Now().Add(-10*time.Minute).UnixMilli(), 10))
		}
	}
}

// 1. TestReviewI_FailedOfferThenWalkStopsShort: Handoff.load stops its walk
// at the first member that answers 204 and joined more than settle (2 min)
// ago (server/handoff.go load, "case i >= ranked && ... > settle"),
// reasoning that a lower-ranked holder "offered it when m joined". But the
// offer is made once, by the rebalancer, right after the holder's view
// changes (ViewChanged -> rebalancer -> HandOver), and an offer that fails
// is never made again (nothing retries it until the next change of view).
// It fails in the most ordinary way: the source lists a new pod before it
// listens (a headless Service with publishNotReadyAddresses, as
// docs/cluster.md recommends, lists a pod as soon as it has an IP; a peers
// file is rolled out first). HandOver then finds every new owner
// unreachable, leaves them out and re-ranks down to the holder itself: the
// device stays where it is. Two minutes later the device is touched at its
// owner: the walk asks the long-standing member ranked second, gets 204 and
// stops before the holder. No Redis: the device starts fresh (its history
// lost) and the old holder keeps its copy (held twice). With Redis the
// owner would take Redis's copy, minus everything since the holder's last
// snapshot, and the holder's copy would stay unowned.
//
// Here A holds the device alone; M (its owner) and B (ranked second) are
// listed before they listen; both start; then, "two minutes later" (B's
// handoff answers say it joined 10 minutes ago: iAged), the device's next
// sample reaches M. Expected: M takes A's state (count 21), A holds nothing.
func TestReviewI_FailedOfferThenWalkStopsShort(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a, b, m := addrs[0], addrs[1], addrs[2]
	dir := t.TempDir()
	fa, fo := filepath.Join(dir, "a"), filepath.Join(dir, "o")
	writePeers(t, fa, a)
	// Ranked M, B, A among the three.
	var dev string
	for i := 0; dev == ""; i++ {
		id := fmt.Sprint("fo", i)
		if r := cluster.NewView("", addrs).Rank([]byte(id), 3, nil); r[0] == m && r[1] == b {
			dev = id
		}
	}
	pa := startGPod(t, a, fa, gOpts{})
	for i := range 20 {
		if code, out := post(t, a, gSample(dev, i+1, float64(i%3))); code != 200 {
			t.Fatalf("sample %d at A: %d %s", i+1, code, out)
		}
	}
	// M and B are listed before they listen: A's rebalancer offers the
	// device to M, then B; both refuse the connection.
	writePeers(t, fa, a, b, m)
	pa.refresh(t)
	time.Sleep(500 * time.Millisecond)
	writePeers(t, fo, a, b, m)
	pb := startGPod(t, b, fo, gOpts{wrap: iAged})
	pm := startGPod(t, m, fo, gOpts{})
	if !gHeld(pa, dev) {
		t.Fatalf("A no longer holds the device after the failed offers (B %v, M %v): the scenario did not happen", gHeld(pb, dev), gHeld(pm, dev))
	}
	// Two minutes on (see iAged), the device's next sample reaches its owner.
	if code, out := post(t, m, gSample(dev, 21, 1)); code != 200 {
		t.Fatalf("sample 21 at M: %d %s", code, out)
	}
	if got := gCount(pm, dev); got != 21 || gHeld(pa, dev) {
		t.Fatalf("M, the owner, counts %d, want 21 (A's 20, then sample 21); A still holds the device: %v (count %d), want false.\n"+
			"A's one offer (rebalancer, at its change of view) failed because M and B did not listen yet, and was never made again; M's load asked B, "+
			"a member for over 2 minutes, got 204 and stopped its walk before A (handoff.go load), so the device started fresh and is held twice",
			got, gHeld(pa, dev), gCount(pa, dev))
	}
}
