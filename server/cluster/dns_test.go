package cluster

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/miekg/dns"
)

// dnsServer is a real DNS server on loopback (UDP) answering A and AAAA
// queries for one name from records the test changes.
type dnsServer struct {
	addr string
	srv  *dns.Server

	mu   sync.Mutex
	name string   // guarded by mu: the one name answered; others get NXDOMAIN
	ips  []string // guarded by mu
	fail bool     // guarded by mu: answer SERVFAIL
	// failAAAA, guarded by mu, answers SERVFAIL to AAAA queries only.
	failAAAA bool
}

// MustStartDNS starts a dnsServer for name, shut down at the end of the test.
func MustStartDNS(tb testing.TB, name string, ips ...string) *dnsServer {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String(), name: name, ips: ips}
	started := make(chan struct{})
	s.srv = &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(started) }}
	go s.srv.ActivateAndServe()
	<-started
	tb.Cleanup(func() { s.srv.Shutdown() })
	return s
}

func (s *dnsServer) set(ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ips = ips
}

func (s *dnsServer) setFail(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

func (s *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	switch {
	case s.fail, s.failAAAA && q.Qtype == dns.TypeAAAA:
		m.Rcode = dns.RcodeServerFailure
	case !strings.EqualFold(q.Name, s.name):
		m.Rcode = dns.RcodeNameError
	default:
		hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET}
		for _, s := range s.ips {
			ip := net.ParseIP(s)
			switch {
			case q.Qtype == dns.TypeA && ip.To4() != nil:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip})
			case q.Qtype == dns.TypeAAAA && ip.To4() == nil:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
			}
		}
	}
	w.WriteMsg(m)
}

// resolver sends every query to s, whatever resolv.conf says.
func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.addr)
	}}
}

func TestDNS(t *testing.T) {
	s := MustStartDNS(t, "peers.test.", "10.0.0.2", "10.0.0.1", "fd00::1")
	ms := metrics.NewSet()
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.resolver(),
		Refresh: time.Hour, Timeout: time.Second, Metrics: ms})
	errs := ms.GetOrCreateCounter("cluster_refresh_errors_total")
	steps := []struct {
		name string
		do   func()
		err  string // part of Refresh's error; "" for none
		want []string
	}{
		{"Started", func() {}, "", []string{"10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"}},
		{"Changed", func() { s.set("10.0.0.1", "10.0.0.3", "fd00::2", "fd00::3") },
			"", []string{"10.0.0.1:8080", "10.0.0.3:8080", "[fd00::2]:8080", "[fd00::3]:8080"}},
		{"OnlyA", func() { s.set("10.0.0.1", "10.0.0.1") }, "", []string{"10.0.0.1:8080"}},
		{"OnlyAAAA", func() { s.set("fd00::9") }, "", []string{"[fd00::9]:8080"}},
		{"ServFail", func() { s.set("10.0.0.1"); s.setFail(true) }, "server misbehaving", []string{"[fd00::9]:8080"}},
		{"NoRecords", func() { s.setFail(false); s.set() }, "no A or AAAA records", []string{"[fd00::9]:8080"}},
		{"Recovered", func() { s.set("10.0.0.1", "10.0.0.5") }, "", []string{"10.0.0.1:8080", "10.0.0.5:8080"}},
		{"Unreachable", func() { s.srv.Shutdown() }, "cannot resolve", []string{"10.0.0.1:8080", "10.0.0.5:8080"}},
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
	s := MustStartDNS(t, "peers.test.", "10.0.0.1", "fd00::1")
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.resolver(), Refresh: time.Hour})
	checkMembers(t, m.View(), "10.0.0.1:8080", "[fd00::1]:8080")
	s.mu.Lock()
	s.failAAAA = true
	s.mu.Unlock()
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatalf("expected an error when AAAA fails")
	}
	checkMembers(t, m.View(), "10.0.0.1:8080", "[fd00::1]:8080")
}

// The first refresh fails when the server is down from the start: the view
// stays empty and the timer keeps trying until it answers.
func TestDNSDownAtStart(t *testing.T) {
	s := MustStartDNS(t, "peers.test.")
	s.setFail(true)
	m := MustStart(t, Options{Self: "10.0.0.1:8080", DNS: "peers.test.", Port: "8080", Resolver: s.resolver(), Refresh: 10 * time.Millisecond})
	if v := m.View(); len(v.Members) != 0 || v.Seq != 0 {
		t.Fatalf("unexpected view after a failed first refresh; got %+v; want empty", v)
	}
	s.setFail(false)
	s.set("10.0.0.1")
	waitFor(t, "the timer to resolve", func() bool { return m.View().HasSelf() })
}
