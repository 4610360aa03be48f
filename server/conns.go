package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Connection timeouts, kept off the request path.
//
// fasthttp's own ReadTimeout, WriteTimeout and IdleTimeout arm a socket
// deadline three times per request, each a clock read and a runtime timer
// update: about 5% of a single-sample request in a CPU profile (2.6% setting
// deadlines, the rest the clock reads and timer checks). A Listener
// instead stamps each connection's phase with one atomic swap of a coarse
// clock (on amd64 the same XCHG as an atomic store), and one janitor
// goroutine sweeps the connections every tick, arming a deadline in the
// past on those that overstayed. fasthttp then
// sees the timeout error its own deadline would have given (a 408 for a
// request cut off mid-way, a quiet close for an idle keep-alive
// connection), within a tick of the bound.
//
// A past deadline is armed for one phase only: when the connection's own
// read or write returns first and the connection moves on (its request
// arrived whole, its response went out), the deadline is cleared, so it
// cannot cut off the next request on a keep-alive connection. The handler's
// run is a phase of its own, with no bound: a slow handler is not a slow
// client.

// Timeouts bound how long a connection may stay in each phase. Zero means
// no bound.
type Timeouts struct {
	// Read bounds a request from its first byte until it is read (not
	// while its handler runs); on a new connection the first request counts
	// from accept.
	Read time.Duration
	// Write bounds one write of a response to a client that does not read.
	Write time.Duration
	// Idle bounds a keep-alive connection waiting for its next request.
	Idle time.Duration
}

// Connection phases, the low bits of conn.state.
const (
	phaseNew    = iota // accepted, no request byte yet: bounded by Read
	phaseIdle          // between requests: bounded by Idle
	phaseRead          // reading a request: bounded by Read
	phaseWrite         // writing a response: bounded by Write
	phaseHandle        // running the request's handler: unbounded
	phases

	phaseMask  = 7
	firedBit   = 8 // the janitor armed a past deadline for this phase
	stateShift = 4 // state = since<<stateShift | firedBit? | phase
)

// phaseNames name the bound each phase is held to; "" for none.
var phaseNames = [phases]string{"read", "idle", "read", "write", ""}

// Listener is a net.Listener whose connections are subject to Timeouts.
// Create it with NewListener; Stop its janitor after the server stops.
type Listener struct {
	net.Listener
	limits [phases]int64 // ns per phase; 0: unbounded
	tick   time.Duration
	base   time.Time
	now    atomic.Int64 // ns since base, advanced every tick: the clock phases are stamped with

	mu    sync.Mutex
	conns map[*conn]struct{}   // open connections; guarded by mu
	perIP map[netip.Addr]int32 // open connections by client address; guarded by mu
	// maxPerIP bounds perIP (0: no bound); set before the first Accept.
	maxPerIP  int32
	refusing  chan struct{} // bounds the refusals being written
	refusals  *metrics.Counter
	refused   *metrics.Counter // requests_total for them
	maxPerMsg []byte           // the canned 429
	// exempt, when set, names addresses maxPerIP does not bound: the
	// cluster's members, whose forwarded requests carry many clients'.
	exempt func(netip.Addr) bool

	timeouts [phases]*metrics.Counter
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// NewListener wraps ln and starts the janitor, which sweeps every sixteenth
// of the shortest timeout (at most 1 s, at least 1 ms). ms gets
// http_open_connections and http_connection_timeouts_total{phase}.
func NewListener(ln net.Listener, t Timeouts, ms *metrics.Set) *Listener {
	l := &Listener{
		Listener: ln,
		limits:   [phases]int64{int64(t.Read), int64(t.Idle), int64(t.Read), int64(t.Write), 0},
		base:     time.Now(),
		conns:    make(map[*conn]struct{}),
		perIP:    make(map[netip.Addr]int32),
		refusing: make(chan struct{}, 256),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for p, name := range phaseNames {
		if name != "" {
			l.timeouts[p] = ms.GetOrCreateCounter(`http_connection_timeouts_total{phase="` + name + `"}`)
		}
	}
	l.refusals = ms.GetOrCreateCounter(`rejections_total{reason="conns_per_ip"}`)
	l.refused = ms.GetOrCreateCounter(`requests_total{route="connection",method="other",status="429"}`)
	ms.NewGauge("http_open_connections", func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(len(l.conns))
	})
	for _, d := range l.limits {
		if d > 0 && (l.tick == 0 || time.Duration(d)/16 < l.tick) {
			l.tick = time.Duration(d) / 16
		}
	}
	if l.tick == 0 {
		close(l.done) // nothing to enforce
		return l
	}
	l.tick = min(max(l.tick, time.Millisecond), time.Second)
	go l.run()
	return l
}

// Accept wraps the next connection.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := &conn{Conn: nc, l: l, ip: remoteIP(nc)}
		c.state.Store(l.now.Load() << stateShift) // phaseNew is 0
		l.mu.Lock()
		if l.maxPerIP > 0 && l.perIP[c.ip] >= l.maxPerIP && (l.exempt == nil || !l.exempt(c.ip)) {
			l.mu.Unlock()
			l.refuse(nc)
			continue
		}
		l.perIP[c.ip]++
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		return c, nil
	}
}

// SetMaxConnsPerIP bounds the open connections from one client address
// (MAX_CONNS_PER_IP); 0: no bound. Call it before serving.
func (l *Listener) SetMaxConnsPerIP(n int) {
	l.maxPerIP = int32(min(n, math.MaxInt32))
	msg := fmt.Sprintf(`{"error":"too many connections from your address: at most %d (MAX_CONNS_PER_IP); reuse a keep-alive connection"}`+"\n", n)
	l.maxPerMsg = fmt.Appendf(nil, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s", len(msg), msg)
}

// SetExempt makes MaxConnsPerIP spare the addresses exempt reports (it is
// asked only when an address is at the bound). Call it before serving.
func (l *Listener) SetExempt(exempt func(netip.Addr) bool) { l.exempt = exempt }

// refuse answers a connection over MaxConnsPerIP with a 429 and closes it,
// in its own goroutine (at most cap(l.refusing) at once; beyond, it is
// closed without a word): write the answer, stop writing, and read what the
// client sends for up to a second, so that closing with its request unread
// does not reset the connection before the client reads the answer.
func (l *Listener) refuse(nc net.Conn) {
	l.refusals.Inc()
	l.refused.Inc()
	select {
	case l.refusing <- struct{}{}:
	default:
		nc.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(time.Second)) //nolint:errcheck // a failure shows as a failed write
		if _, err := nc.Write(l.maxPerMsg); err != nil {
			return
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.CloseWrite() //nolint:errcheck
		}
		io.Copy(io.Discard, io.LimitReader(nc, 64<<10)) //nolint:errcheck
	}()
}

// remoteIP is the client address of nc, IPv4-mapped addresses unmapped.
func remoteIP(nc net.Conn) netip.Addr {
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Stop ends the janitor and waits for it. Call it after the server has
// stopped serving: the listener's Close does not stop it, since the
// connections still draining need their bounds.
func (l *Listener) Stop() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

func (l *Listener) run() {
	defer close(l.done)
	t := time.NewTicker(l.tick)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			now := int64(time.Since(l.base))
			l.now.Store(now)
			l.sweep(now)
		}
	}
}

// sweep arms a past deadline on every connection over its phase's bound.
// The connection counts the timeout if it is in fact cut off (see cutOff).
func (l *Listener) sweep(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		if s := c.state.Load(); overdue(s, now, l.limits[s&phaseMask]) {
			c.fire(s)
		}
	}
}

// overdue reports whether a connection in state s has overstayed limit at
// now (both in ns on the listener's clock), and has not been cut off yet.
func overdue(s, now, limit int64) bool {
	return limit > 0 && s&firedBit == 0 && now-s>>stateShift >= limit
}

// conn stamps its phase changes for the janitor. Only the goroutine serving
// the connection changes its phase; the janitor loads the state and sets
// firedBit.
type conn struct {
	net.Conn
	l      *Listener
	state  atomic.Int64 // since<<stateShift | firedBit? | phase, since on l.now
	closed atomic.Bool
	ip     netip.Addr // the client's, for Listener.perIP

	// mu makes the janitor's CAS of firedBit and its deadline one step as
	// seen by a phase change that finds firedBit set, so the change clears
	// the deadline after it was armed, never before. Only those two take it:
	// the phase change on the hot path is a lone atomic swap.
	mu sync.Mutex

	// line holds the first bytes of the request being read, so that a
	// request fasthttp rejects mid-way (a 408 in its body, a broken chunk),
	// after it has reset the request, is still counted under its route.
	// Only the goroutine serving the connection uses it.
	line    [64]byte
	lineLen uint8
	fresh   bool // line was taken by the Read that began the current request
	tail    bool // the request began in an earlier Read: the next bytes are not its first
}

// requestLine returns the method and path of the request being read, from
// its first bytes, or nils when they did not hold them (a pipelined
// request, or a request line longer than line).
func (c *conn) requestLine() (method, path []byte) {
	b := c.line[:c.lineLen]
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 {
		return nil, nil
	}
	method, b = b[:sp], b[sp+1:]
	if i := bytes.Index(b, []byte("://")); i > 0 && i < bytes.IndexByte(b, ' ') {
		// absolute form, http://host/path: the route is the path
		b = b[i+3:]
		if i = bytes.IndexByte(b, '/'); i < 0 {
			return nil, nil
		}
		b = b[i:]
	}
	end := bytes.IndexAny(b, " ?")
	if end <= 0 {
		return nil, nil
	}
	return method, b[:end]
}

// fire arms a past deadline on c if it is still in state s.
func (c *conn) fire(s int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The CAS fails when the connection moved on since the load.
	if !c.state.CompareAndSwap(s, s|firedBit) {
		return
	}
	if s&phaseMask == phaseWrite {
		_ = c.Conn.SetWriteDeadline(time.Unix(1, 0))
	} else {
		_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// enter stamps phase p and returns the state it replaces. If the bound of
// the phase left had fired, its I/O finished anyway: the deadline is
// cleared, or it would cut off the next phase's I/O.
func (c *conn) enter(p int64) int64 { return c.swap(c.l.now.Load()<<stateShift | p) }

// swap stores state s (see enter) and returns the state it replaces.
func (c *conn) swap(s int64) int64 {
	old := c.state.Swap(s)
	if old&firedBit != 0 {
		c.mu.Lock() // wait for fire to arm the deadline it decided on
		if old&phaseMask == phaseWrite {
			_ = c.Conn.SetWriteDeadline(time.Time{})
		} else {
			_ = c.Conn.SetReadDeadline(time.Time{})
		}
		c.mu.Unlock()
	}
	return old
}

// cutOff counts a timeout when err is the past deadline armed for state s.
func (c *conn) cutOff(s int64, err error) {
	if s&firedBit != 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		c.l.timeouts[s&phaseMask].Inc()
	}
}

// handling marks the start of a request's handler: the request has been
// read, and the handler's run is not the client's to answer for.
func (c *conn) handling() {
	c.enter(phaseHandle)
	c.tail = false
}

// active marks the start of a request, as fasthttp reports it (see
// Handler.connState). A request whose first byte came in a Read is in its
// read phase already. Bytes read along with the request before it are
// either a pipelined request or the CRLF some clients send after a body,
// which fasthttp skips (RFC 9112 2.2) and this cannot tell apart: they are
// held to the idle bound, as a connection waiting for its next request,
// until more bytes arrive and start the read bound. Before the hook, a
// pipelined request stalled mid-way was bounded by nothing; with a read
// bound, clients sending the CRLF were cut off at READ_TIMEOUT, counted as
// read timeouts.
func (c *conn) active() {
	switch s := c.state.Load(); s & phaseMask {
	case phaseNew: // the first request keeps counting from accept
		c.state.CompareAndSwap(s, s&^phaseMask|phaseRead)
	case phaseRead:
	default:
		c.enter(phaseIdle)
	}
	if !c.fresh {
		// Its first bytes came with an earlier request: its line is not
		// the one kept, and the bytes that come next are its rest, not a
		// line (a stalled pipelined request was counted under the route
		// its late body bytes happened to spell).
		c.lineLen, c.tail = 0, true
	}
	c.fresh = false
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		switch s := c.state.Load(); s & phaseMask {
		case phaseIdle: // a new request: its bound starts at its first byte
			c.enter(phaseRead)
			if !c.tail {
				c.lineLen, c.fresh = uint8(copy(c.line[:], p[:n])), true
			}
			c.tail = false
		case phaseNew: // the first request keeps counting from accept, fired or not
			c.state.CompareAndSwap(s, s&^phaseMask|phaseRead)
			c.lineLen, c.fresh = uint8(copy(c.line[:], p[:n])), true
		}
	}
	if err != nil {
		c.cutOff(c.state.Load(), err)
	}
	return n, err
}

// Write bounds the write by WRITE_TIMEOUT; after it the connection is idle,
// unless the write came while a request was being read (an interim
// "100 Continue", or an earlier pipelined response flushed before the next
// request is whole): then that request's read bound goes on from where it
// was, instead of restarting as an idle wait.
func (c *conn) Write(p []byte) (int, error) {
	old := c.enter(phaseWrite)
	n, err := c.Conn.Write(p)
	next := c.l.now.Load()<<stateShift | phaseIdle
	if ph := old & phaseMask; ph == phaseRead || ph == phaseNew {
		next = old &^ firedBit
	}
	if s := c.swap(next); err != nil {
		c.cutOff(s, err)
	}
	return n, err
}

func (c *conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		if c.l.perIP[c.ip]--; c.l.perIP[c.ip] <= 0 {
			delete(c.l.perIP, c.ip)
		}
		c.l.mu.Unlock()
	}
	return c.Conn.Close()
}
