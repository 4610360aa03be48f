package cluster

// Hostile review Q of 58f670d (MAX_CONNS_PER_IP spares members listed by
// name: Membership.resolve looks the listed names up at each refresh).
// Run: go test ./server/cluster -run 'TestReviewQ' -count=1 -v

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"ai-load-service/server/cluster/dnstest"
)

// blackHoleResolver is a resolver whose DNS server receives every query
// and never answers (a DNS server that hangs, or a dropped UDP path): each
// lookup lasts until its context ends.
func blackHoleResolver(tb testing.TB) *net.Resolver {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// TestReviewQ_HangingNameLookupDelaysView: resolve (membership.go) looks
// the listed host names up inside refresh, before installLocked, within the
// refresh's own context, and waits for every lookup. Those lookups only
// feed IsMember (the MAX_CONNS_PER_IP exemption), yet a name whose DNS
// does not answer now holds up installing the view itself, for the whole
// refresh Timeout, every refresh.
//
// Expected (correct) behaviour: with a PEERS_FILE source a refresh is "a
// file read" (Options.Timeout's comment), and Refresh "re-reads the source
// now, for a caller with news that the view is stale"; Start "reads the
// source once before it returns". A new member added to the file is in
// the view as soon as Refresh returns, well within a second, whatever DNS
// does; before 58f670d no refresh of a file ever waited on DNS.
//
// What happens: Start and Refresh each take the full Timeout (3 s here,
// 2 s by default). In the service, forward.go waits for Refresh with
// FORWARD_TIMEOUT (2 s by default, the same as the refresh Timeout), so
// after a 421 the retry gives up waiting and goes on with the old view:
// a request that would have reached the new owner fails instead.
func TestReviewQ_HangingNameLookupDelaysView(t *testing.T) {
	file := filepath.Join(t.TempDir(), "peers")
	writeFile(t, file, "10.0.0.9:8080\nslow-member.test.:8080\n")
	m, err := New(Options{Self: "10.0.0.9:8080", File: file, Resolver: blackHoleResolver(t),
		Refresh: time.Hour, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	m.Start()
	t.Cleanup(m.Stop)
	if took := time.Since(began); took > time.Second {
		t.Errorf("Start took %s to read a peers file (a host name's lookup hangs); want under 1s", took.Round(time.Millisecond))
	}
	checkMembers(t, m.View(), "10.0.0.9:8080", "slow-member.test.:8080")

	// A member joins: the file lists it now.
	writeFile(t, file, "10.0.0.2:8080\n10.0.0.9:8080\nslow-member.test.:8080\n")
	began = time.Now()
	err = m.Refresh(context.Background())
	took := time.Since(began)
	if err != nil {
		t.Fatal(err)
	}
	checkMembers(t, m.View(), "10.0.0.2:8080", "10.0.0.9:8080", "slow-member.test.:8080")
	if took > time.Second {
		t.Errorf("Refresh took %s to install a new member from the peers file (a listed name's lookup hangs); want under 1s", took.Round(time.Millisecond))
	}

	// As the forwarder waits: at most FORWARD_TIMEOUT (2 s, the default
	// Timeout too; 1 s here against a 3 s Timeout).
	writeFile(t, file, "10.0.0.2:8080\n10.0.0.3:8080\n10.0.0.9:8080\nslow-member.test.:8080\n")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.Refresh(ctx); err != nil {
		t.Errorf("Refresh within 1s after the file changed: %v; want the new view", err)
	}
}

// TestReviewQ_UnlistedNameAddressesResurrected: resolve rebuilds hosts
// (each listed name's last answer) only when some name is listed: with
// "if len(names) > 0" guarding "m.hosts = hosts", a refresh that lists
// IPs alone keeps every old name's addresses in m.hosts. TestIsMember's
// comment says "a member no longer listed is no longer known", and the
// hosts comment says it keeps "each name's last answer, so a failed lookup
// keeps what the name had": a bridge over a failed lookup between
// refreshes that list the name, which is what happens when any other name
// stays listed meanwhile (hosts is rebuilt without it).
//
// Here: pod-a (10.0.0.1) is listed, then the file lists IPs only (pod-a
// is forgotten by IsMember, correctly), then pod-a is listed again while
// its lookup fails. Expected: 10.0.0.1, an address pod-a had before it
// was dropped from the list (since reassigned to anyone, a client say),
// is not exempt from MAX_CONNS_PER_IP, exactly as when another name was
// listed meanwhile. What happens: it is a member again.
func TestReviewQ_UnlistedNameAddressesResurrected(t *testing.T) {
	for _, other := range []bool{true, false} {
		t.Run(fmt.Sprint("anotherNameListedMeanwhile=", other), func(t *testing.T) {
			s := dnstest.Start(t, "pod-a.test.", "10.0.0.1")
			file := filepath.Join(t.TempDir(), "peers")
			writeFile(t, file, "10.0.0.9:8080\npod-a.test.:8080\n")
			m := MustStart(t, Options{Self: "10.0.0.9:8080", File: file, Resolver: s.Resolver(), Refresh: time.Hour, Timeout: time.Second})
			refresh := func(names bool) {
				t.Helper()
				before := m.addrs.done.Load()
				if err := m.Refresh(context.Background()); err != nil {
					t.Fatal(err)
				}
				if names { // wait for their lookup
					waitLookup(t, m, before)
				}
			}
			waitLookup(t, m, 0) // names are looked up apart from the refresh
			a := netip.MustParseAddr("10.0.0.1")
			if !m.IsMember(a) {
				t.Fatal("test premise: pod-a's address is not a member while listed")
			}
			meanwhile := "10.0.0.9:8080\n"
			if other {
				meanwhile += "pod-b.test.:8080\n" // NXDOMAIN: no addresses
			}
			writeFile(t, file, meanwhile)
			refresh(other)
			if m.IsMember(a) {
				t.Fatal("test premise: pod-a's old address still a member after pod-a left the list")
			}
			s.SetFail(true)
			writeFile(t, file, "10.0.0.9:8080\npod-a.test.:8080\n")
			refresh(true)
			if m.IsMember(a) {
				t.Fatalf("10.0.0.1, pod-a's address from before pod-a was unlisted, is a member again on a failed lookup; want not (other name listed meanwhile: %v)", other)
			}
		})
	}
}
