// Package dnstest runs a real DNS server on loopback for tests of DNS
// discovery (PEERS_DNS): the cluster package's own tests and the service's
// multi-process tests.
package dnstest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server answers A and AAAA queries (UDP, loopback) for one name from
// records the test changes.
type Server struct {
	Addr string // host:port it listens on
	srv  *dns.Server

	mu       sync.Mutex
	name     string   // guarded by mu: the one name answered; others get NXDOMAIN
	ips      []string // guarded by mu
	fail     bool     // guarded by mu: answer SERVFAIL
	failAAAA bool     // guarded by mu: answer SERVFAIL to AAAA queries only
}

// Start starts a Server for name, shut down at the end of the test.
func Start(tb testing.TB, name string, ips ...string) *Server {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{Addr: pc.LocalAddr().String(), name: name, ips: ips}
	started := make(chan struct{})
	s.srv = &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(started) }}
	go s.srv.ActivateAndServe() //nolint:errcheck // ends with Shutdown
	<-started
	tb.Cleanup(func() { s.srv.Shutdown() }) //nolint:errcheck
	return s
}

// Stop shuts the server down: later queries time out.
func (s *Server) Stop() { s.srv.Shutdown() } //nolint:errcheck

// Set replaces the name's addresses.
func (s *Server) Set(ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ips = ips
}

// SetFail makes every answer SERVFAIL, or not.
func (s *Server) SetFail(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

// SetFailAAAA makes AAAA answers SERVFAIL, or not.
func (s *Server) SetFailAAAA(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAAAA = fail
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
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
	w.WriteMsg(m) //nolint:errcheck
}

// Resolver sends every query to s, whatever resolv.conf says.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.Addr)
	}}
}
