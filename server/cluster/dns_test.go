package cluster

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ai-load-service/server/cluster/dnstest"

	"github.com/VictoriaMetrics/metrics"
)

func TestDNS(t *testing.T) {
	s := dnstest.Start(t, "peers.test.", "10.0.0.2", "10.0.0.1", "fd00::1")
	ms := metrics.NewSet()
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.Resolver(),
		Refresh: time.Hour, Timeout: time.Second, Metrics: ms})
	errs := ms.GetOrCreateCounter("cluster_refresh_errors_total")
	steps := []struct {
		name string
		do   func()
		err  string // part of Refresh's error; "" for none
		want []string
	}{
		{"Started", func() {}, "", []string{"10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"}},
		{"Changed", func() { s.Set("10.0.0.1", "10.0.0.3", "fd00::2", "fd00::3") },
			"", []string{"10.0.0.1:8080", "10.0.0.3:8080", "[fd00::2]:8080", "[fd00::3]:8080"}},
		{"OnlyA", func() { s.Set("10.0.0.1", "10.0.0.1") }, "", []string{"10.0.0.1:8080"}},
		{"OnlyAAAA", func() { s.Set("fd00::9") }, "", []string{"[fd00::9]:8080"}},
		{"ServFail", func() { s.Set("10.0.0.1"); s.SetFail(true) }, "server misbehaving", []string{"[fd00::9]:8080"}},
		{"NoRecords", func() { s.SetFail(false); s.Set() }, "no A or AAAA records", []string{"[fd00::9]:8080"}},
		{"Recovered", func() { s.Set("10.0.0.1", "10.0.0.5") }, "", []string{"10.0.0.1:8080", "10.0.0.5:8080"}},
		{"Unreachable", func() { s.Stop() }, "cannot resolve", []string{"10.0.0.1:8080", "10.0.0.5:8080"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := errs.Get()
			st.do()
			if st.name != "Started" {
				err := m.Refresh(context.Background())
				if st.err == "" && err != nil || st.err != "" && (err == nil || !strings.Contains(err.Error(), st.err)) {
					t.Fatalf("unexpected Refresh error; got %v; want %q", err, st.err)
				}
				want := uint64(0)
				if st.err != "" {
					want = 1
				}
				if got := errs.Get() - before; got != want {
					t.Fatalf("unexpected refresh errors counted; got %d; want %d", got, want)
				}
			}
			checkMembers(t, m.View(), st.want...)
		})
	}
}

// A failure of one family fails the refresh: the combined lookup would
// return the other family's addresses alone and drop members.
func TestDNSOneFamilyFails(t *testing.T) {
	s := dnstest.Start(t, "peers.test.", "10.0.0.1", "fd00::1")
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.Resolver(), Refresh: time.Hour})
	checkMembers(t, m.View(), "10.0.0.1:8080", "[fd00::1]:8080")
	s.SetFailAAAA(true)
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatalf("expected an error when AAAA fails")
	}
	checkMembers(t, m.View(), "10.0.0.1:8080", "[fd00::1]:8080")
}

// The first refresh fails when the server is down from the start: the view
// stays empty and the timer keeps trying until it answers.
func TestDNSDownAtStart(t *testing.T) {
	s := dnstest.Start(t, "peers.test.")
	s.SetFail(true)
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.Resolver(), Refresh: 10 * time.Millisecond})
	if v := m.View(); len(v.Members) != 0 || v.Seq != 0 {
		t.Fatalf("unexpected view after a failed first refresh; got %+v; want empty", v)
	}
	s.SetFail(false)
	s.Set("10.0.0.1")
	waitFor(t, "the timer to resolve", func() bool { return m.View().HasSelf() })
}

// TestIsMember: IsMember knows listed members by IP at once, and by a name
// once the lookup a refresh asks for has answered; a failed lookup keeps
// the name's last addresses, and a member no longer listed is no longer
// known.
func TestIsMember(t *testing.T) {
	s := dnstest.Start(t, "pod-a.test.", "10.0.0.1")
	file := filepath.Join(t.TempDir(), "peers")
	writeFile(t, file, "pod-a.test.:8080\n10.0.0.9:8080\n")
	m := MustStart(t, Options{Self: "10.0.0.9:8080", File: file, Resolver: s.Resolver(), Refresh: time.Hour, Timeout: time.Second})
	refresh := func() {
		before := m.addrs.done.Load()
		if err := m.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitLookup(t, m, before)
	}
	waitLookup(t, m, 0)
	for _, st := range []struct {
		name    string
		do      func()
		yes, no []string
	}{
		{"Started", func() {}, []string{"10.0.0.1", "10.0.0.9", "::ffff:10.0.0.1"}, []string{"10.0.0.2", "127.0.0.1"}},
		{"Moved", func() { s.Set("10.0.0.2", "fd00::2"); refresh() }, []string{"10.0.0.2", "fd00::2", "10.0.0.9"}, []string{"10.0.0.1"}},
		{"LookupFails", func() { s.SetFail(true); refresh() }, []string{"10.0.0.2", "fd00::2"}, nil},
		{"Unlisted", func() { // no names: nothing to look up, and the IPs count at once
			s.SetFail(false)
			writeFile(t, file, "10.0.0.9:8080\n")
			if err := m.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
		}, []string{"10.0.0.9"}, []string{"10.0.0.2", "fd00::2"}},
	} {
		st.do()
		for _, ip := range st.yes {
			if !m.IsMember(netip.MustParseAddr(ip)) {
				t.Errorf("%s: IsMember(%s) false; want true", st.name, ip)
			}
		}
		for _, ip := range st.no {
			if m.IsMember(netip.MustParseAddr(ip)) {
				t.Errorf("%s: IsMember(%s) true; want false", st.name, ip)
			}
		}
	}
}

// waitLookup waits until the resolver has finished a lookup after the
// first before: the one the refresh just made asked for.
func waitLookup(tb testing.TB, m *Membership, before uint64) {
	tb.Helper()
	waitFor(tb, "the member names' lookup", func() bool { return m.addrs.done.Load() > before })
}
