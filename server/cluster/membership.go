// Package cluster tells which pods are in the cluster and which of them owns
// a device: Membership keeps the current View from a static list, a file or
// DNS, and View.Owner picks a device's owner by rendezvous hashing.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
)

// Options configure a Membership. Exactly one of Static, File and DNS is
// the source. A zero field means the default in its comment.
type Options struct {
	Self     string        // this pod's host:port as the source lists it (an IP for DNS); required
	Static   []string      // host:port of every member; never re-read
	File     string        // path of a file of host:port lines (blank lines and # comments ignored); re-read every refresh, so replace it by rename (as ConfigMap volumes do), never rewrite it in place
	DNS      string        // name whose A and AAAA records are the members (end it with "." to skip the search list); re-resolved every refresh
	Port     string        // port of the DNS members, 1-65535; required with DNS
	Refresh  time.Duration // between refreshes, at least 100ms whatever the value; zero: 5s
	Timeout  time.Duration // of one refresh (a file read or both DNS lookups); zero: 2s
	Resolver *net.Resolver // for DNS; nil: net.DefaultResolver
	Log      zerolog.Logger
	// Metrics receives cluster_members (gauge), cluster_view_changes_total
	// and cluster_refresh_errors_total; it must not hold them already.
	// Nil: none.
	Metrics *metrics.Set
	// OnChange, if set, is called after each new view is installed, with
	// the view it replaced, one call at a time in Seq order, on the
	// goroutine that installed it: Start's caller, the refresh goroutine,
	// or Leave's caller. It must not call Refresh, Leave or Stop (each
	// would wait for it).
	OnChange func(old, new *View)
}

// Membership keeps the current View of the cluster: Start reads the source
// once and then every Refresh on its own goroutine until Stop.
type Membership struct {
	opts   Options
	source func(ctx context.Context) ([]string, error)
	view   atomic.Pointer[View]

	// installMu serializes installing views, so OnChange calls see each
	// (old, new) pair once, in order, whether from a refresh or Leave.
	installMu sync.Mutex
	left      bool     // guarded by installMu: Leave was called; Self stays out of every view
	listed    []string // guarded by installMu: the source's latest list
	// suspects, guarded by installMu, are members out of the view until
	// the time given (see Suspect); nsuspects counts them for a cheap
	// check.
	suspects  map[string]time.Time
	nsuspects atomic.Int32

	// addrs knows the listed members' addresses, for IsMember.
	addrs memberAddrs

	mu      sync.Mutex
	running bool          // guarded by mu: between Start and Stop; Refresh is refused outside
	round   *round        // guarded by mu: the refresh the next Refresh callers wait for; nil if none asked
	kick    chan struct{} // buffer 1; a token is sent with each new round (under mu) and taken by loop

	ctx    context.Context // ends the refresh goroutine and any refresh in progress
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Owned by whichever goroutine refreshes: Start's caller for the
	// first refresh, then the refresh goroutine alone.
	last     time.Time // start of the latest refresh, for the minimum gap
	warnedAt time.Time // of the latest failure logged
	failed   int       // failures since the latest success

	changes, refreshErrors *metrics.Counter
}

// round is one real refresh that any number of Refresh calls wait for.
type round struct {
	done chan struct{} // closed when err is set
	err  error
}

// minGap is the least time between the starts of two real refreshes: a
// burst of peers answering 421 costs one file read or DNS lookup per gap.
const minGap = 100 * time.Millisecond

// warnEvery limits refresh failure warnings to one per interval, so an
// outage of the source does not flood the log; every failure is counted.
const warnEvery = 30 * time.Second

// ErrNotRunning is returned by Refresh before Start and after Stop.
var ErrNotRunning = errors.New("cluster membership is not running")

// errNoRecords is a DNS answer without addresses, which is taken for a
// hiccup like any other lookup error: a pod never exists alone by DNS.
var errNoRecords = errors.New("no A or AAAA records")

// New checks opts and returns a Membership whose view is empty until Start.
func New(opts Options) (*Membership, error) {
	self, err := parseAddr(opts.Self)
	if err != nil {
		return nil, fmt.Errorf("cannot parse self address: %w", err)
	}
	opts.Self = self
	if opts.Refresh <= 0 {
		opts.Refresh = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	m := &Membership{opts: opts, kick: make(chan struct{}, 1)}
	m.addrs.kick = make(chan struct{}, 1)
	sources := 0
	if len(opts.Static) > 0 {
		sources++
		static, err := parseList(opts.Static)
		if err != nil {
			return nil, err
		}
		m.source = func(context.Context) ([]string, error) { return static, nil }
	}
	if opts.File != "" {
		sources++
		m.source = m.readFile
	}
	if opts.DNS != "" {
		sources++
		if p, err := strconv.ParseUint(opts.Port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("invalid peer port %q for DNS peers %q; want 1-65535", opts.Port, opts.DNS)
		}
		m.source = m.lookup
	}
	if sources != 1 {
		return nil, fmt.Errorf("got %d peer sources; set exactly one of a static list, a file and a DNS name", sources)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.view.Store(NewView(opts.Self, nil))
	m.changes = new(metrics.Counter)
	m.refreshErrors = new(metrics.Counter)
	if s := opts.Metrics; s != nil {
		s.NewGauge("cluster_members", func() float64 { return float64(len(m.View().Members)) })
		m.changes = s.NewCounter("cluster_view_changes_total")
		m.refreshErrors = s.NewCounter("cluster_refresh_errors_total")
	}
	return m, nil
}

// View returns the current view, never nil. It is one atomic load, for
// every request; keep the View for the whole request so that all its
// decisions agree.
func (m *Membership) View() *View { return m.view.Load() }

// Start reads the source once before it returns (a failure is logged and
// counted, and the view stays empty), then refreshes every Refresh until
// Stop. It panics if called twice.
func (m *Membership) Start() {
	m.mu.Lock()
	if m.running || m.ctx.Err() != nil {
		m.mu.Unlock()
		panic(errors.New("BUG: cluster.Membership.Start called twice or after Stop"))
	}
	m.mu.Unlock()
	_ = m.refresh()
	m.mu.Lock()
	m.running = true
	m.mu.Unlock()
	m.wg.Add(2)
	go m.loop()
	go m.resolver()
}

// Stop ends the refresh goroutine and waits for it; Refresh calls waiting
// get ErrNotRunning. The last view stays in place.
func (m *Membership) Stop() {
	m.mu.Lock()
	m.running = false
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// Refresh re-reads the source now, for a caller with news that the view
// is stale (a peer answered 421 or could not be reached), and returns the
// refresh's error (the view is kept on error). The refresh it waits for
// starts after the call, so its result reflects the source as of the call
// or later; calls that arrive together share one, and real refreshes start
// at least 100ms apart, so Refresh can wait that long plus the refresh.
// ctx bounds the wait only: the refresh itself goes on for the others.
func (m *Membership) Refresh(ctx context.Context) error {
	m.mu.Lock()
	if !m.running {
		m.mu.Unlock()
		return ErrNotRunning
	}
	if m.round == nil {
		m.round = &round{done: make(chan struct{})}
		m.kick <- struct{}{} // cannot block: loop takes the token before it takes the round
	}
	r := m.round
	m.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Leave takes Self out of the view, now and in every later refresh, so
// this pod owns nothing while it stops and peers' requests for its
// devices can be answered as not ours. It installs the new view (calling
// OnChange) before it returns; later calls do nothing.
func (m *Membership) Leave() {
	m.installMu.Lock()
	defer m.installMu.Unlock()
	if m.left {
		return
	}
	m.left = true
	m.installLocked(m.listed)
}

// Suspect takes member (never Self) out of the view until the time given:
// a connection to it was refused, so nothing listens there (it died, or is
// restarting). Its devices go to the members that own them without it,
// which take their state from Redis, instead of failing until the source
// stops listing it. It is back at the first refresh after until while the
// source lists it, or at once by Unsuspect. An earlier until than the one
// in force changes nothing: suspicion passed on by other members (see
// Suspects) never outlasts the refusal it started from.
func (m *Membership) Suspect(member string, until time.Time) {
	if member == m.opts.Self || !time.Now().Before(until) {
		return
	}
	m.installMu.Lock()
	defer m.installMu.Unlock()
	if m.suspects == nil {
		m.suspects = map[string]time.Time{}
	}
	old, ok := m.suspects[member]
	if ok && !old.Before(until) {
		return
	}
	if !ok {
		m.opts.Log.Warn().Str("member", member).Time("until", until).Msg("cluster member refused a connection: out of the view until it answers or the time passes")
	}
	m.suspects[member] = until
	m.nsuspects.Store(int32(len(m.suspects)))
	m.installLocked(m.listed)
}

// Suspects returns the members Suspect took out of the view and not yet
// back, sorted, each with the time it comes back.
func (m *Membership) Suspects() []Suspect {
	if m.nsuspects.Load() == 0 {
		return nil
	}
	m.installMu.Lock()
	defer m.installMu.Unlock()
	now := time.Now()
	var out []Suspect
	for s, until := range m.suspects {
		if now.Before(until) {
			out = append(out, Suspect{s, until})
		}
	}
	slices.SortFunc(out, func(a, b Suspect) int { return strings.Compare(a.Member, b.Member) })
	return out
}

// Suspect is a suspected member and the time it comes back.
type Suspect struct {
	Member string
	Until  time.Time
}

// Listed returns the members the source lists now, suspected or not (less
// Self after Leave).
func (m *Membership) Listed() []string {
	m.installMu.Lock()
	defer m.installMu.Unlock()
	return slices.Clone(m.listed)
}

// Unsuspect brings member back into the view if Suspect took it out: it
// was heard from.
func (m *Membership) Unsuspect(member string) {
	if m.nsuspects.Load() == 0 {
		return
	}
	m.installMu.Lock()
	defer m.installMu.Unlock()
	if _, ok := m.suspects[member]; !ok {
		return
	}
	delete(m.suspects, member)
	m.nsuspects.Store(int32(len(m.suspects)))
	m.installLocked(m.listed)
}

// loop refreshes on the timer and on Refresh calls until Stop.
func (m *Membership) loop() {
	defer m.wg.Done()
	t := time.NewTicker(m.opts.Refresh)
	defer t.Stop()
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-m.ctx.Done():
			m.finish()
			return
		case <-t.C:
		case <-m.kick:
		}
		if wait := minGap - time.Since(m.last); wait > 0 {
			gap.Reset(wait)
			select {
			case <-m.ctx.Done():
				m.finish()
				return
			case <-gap.C:
			}
		}
		// Take the round and its token together, so a round made after
		// this one always has a token for the next pass.
		m.mu.Lock()
		r := m.round
		m.round = nil
		select {
		case <-m.kick:
		default:
		}
		m.mu.Unlock()
		err := m.refresh()
		if r != nil {
			r.err = err
			close(r.done)
		}
	}
}

// finish releases the Refresh calls waiting when the loop ends. Stop set
// running false before it ended the loop, so no round is added after.
func (m *Membership) finish() {
	m.mu.Lock()
	r := m.round
	m.round = nil
	m.mu.Unlock()
	if r != nil {
		r.err = ErrNotRunning
		close(r.done)
	}
}

// refresh reads the source and installs its list, or keeps the view and
// counts and logs the failure.
func (m *Membership) refresh() error {
	m.last = time.Now()
	ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
	defer cancel()
	members, err := m.source(ctx)
	if err != nil {
		if m.ctx.Err() != nil {
			return ErrNotRunning // Stop cut it short: not the source's fault
		}
		m.refreshErrors.Inc()
		m.failed++
		if now := time.Now(); now.Sub(m.warnedAt) >= warnEvery {
			m.warnedAt = now
			m.opts.Log.Warn().Err(err).Int("failures", m.failed).Strs("members", m.View().Members).
				Msg("cannot refresh cluster members; keeping the current view")
		}
		return err
	}
	if m.failed > 0 {
		m.opts.Log.Info().Int("failures", m.failed).Msg("cluster members refreshed again")
		m.failed = 0
		m.warnedAt = time.Time{}
	}
	m.addrs.list(members)
	m.installMu.Lock()
	defer m.installMu.Unlock()
	m.installLocked(members)
	return nil
}

// IsMember reports whether ip is the address of a listed member, suspected
// or not, by IP or by a name as last resolved (looked up after each
// refresh, apart from it): the listener spares members MAX_CONNS_PER_IP,
// since a member forwards all its clients' requests from its own address.
func (m *Membership) IsMember(ip netip.Addr) bool { return m.addrs.has(ip) }

// installLocked makes members (sorted, unique) the view if they differ
// from it, less Self after Leave. It logs the change and calls OnChange.
func (m *Membership) installLocked(members []string) {
	m.listed = members
	if m.left {
		if i, ok := slices.BinarySearch(members, m.opts.Self); ok {
			members = slices.Delete(slices.Clone(members), i, i+1)
		}
	}
	if len(m.suspects) > 0 {
		now := time.Now()
		for s, until := range m.suspects {
			if now.After(until) {
				delete(m.suspects, s)
			}
		}
		m.nsuspects.Store(int32(len(m.suspects)))
		members = slices.DeleteFunc(slices.Clone(members), func(s string) bool {
			_, out := m.suspects[s]
			return out
		})
	}
	old := m.View()
	if slices.Equal(old.Members, members) {
		return
	}
	v := NewView(m.opts.Self, members).follow(old)
	v.Changed = time.Now()
	v.Seq = old.Seq + 1
	m.view.Store(v)
	m.changes.Inc()
	joined, left := v.Diff(old)
	m.opts.Log.Info().Strs("joined", joined).Strs("left", left).Strs("members", v.Members).
		Uint64("seq", v.Seq).Bool("self", v.HasSelf()).Msg("cluster view changed")
	if m.opts.OnChange != nil {
		m.opts.OnChange(old, v)
	}
}

// readFile is the File source. A missing or unreadable file is an error
// (the view is kept); an empty one is an empty cluster.
func (m *Membership) readFile(context.Context) ([]string, error) {
	b, err := os.ReadFile(m.opts.File)
	if err != nil {
		return nil, fmt.Errorf("cannot read peers file: %w", err)
	}
	members := []string{}
	for n, line := range bytes.Split(b, []byte("\n")) {
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		s := strings.TrimSpace(string(line))
		if s == "" {
			continue
		}
		a, err := parseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("cannot parse peers file %q line %d: %w", m.opts.File, n+1, err)
		}
		members = append(members, a)
	}
	slices.Sort(members)
	return slices.Compact(members), nil
}

// lookup is the DNS source. It asks for A and AAAA records apart, so that
// a failure of either fails the refresh instead of dropping the members of
// that family (one combined lookup returns what it got without an error).
// Both ask the name the search list found first: a short name's AAAA
// query, empty in the cluster, walked on to the bare name outside it, and
// an upstream's SERVFAIL for that kept a new pod from ever being ready.
func (m *Membership) lookup(ctx context.Context) ([]string, error) {
	name, err := m.opts.Resolver.LookupCNAME(ctx, m.opts.DNS)
	if de := (*net.DNSError)(nil); errors.As(err, &de) && de.IsNotFound {
		err = errNoRecords
	}
	if err != nil {
		return nil, fmt.Errorf("cannot resolve peers %q: %w", m.opts.DNS, err)
	}
	var members []string
	for _, network := range []string{"ip4", "ip6"} {
		ips, err := m.opts.Resolver.LookupNetIP(ctx, network, name)
		if err != nil {
			var de *net.DNSError
			if errors.As(err, &de) && de.IsNotFound {
				continue // no records of this family
			}
			return nil, fmt.Errorf("cannot resolve peers %q: %w", m.opts.DNS, err)
		}
		for _, ip := range ips {
			members = append(members, net.JoinHostPort(ip.Unmap().String(), m.opts.Port))
		}
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("cannot resolve peers %q: %w", m.opts.DNS, errNoRecords)
	}
	return parseList(members)
}

// parseList parses addrs and returns them sorted and without duplicates
// (after parsing, so "[::1]:80" and "[0::1]:80" are one), never nil.
func parseList(addrs []string) ([]string, error) {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		p, err := parseAddr(a)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// parseAddr checks a host:port and returns its canonical form, the one
// that View.Members holds and every pod hashes: IPs as netip prints them
// (IPv4-mapped IPv6 as IPv4), host names in lower case, the port in
// decimal. Two spellings of one address would otherwise be two members.
func parseAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(strings.TrimSpace(s))
	if err != nil {
		return "", fmt.Errorf("invalid peer address %q: %w; want host:port or [ipv6]:port", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", fmt.Errorf("invalid peer address %q: port %q is not 1-65535", s, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	} else {
		host = strings.ToLower(host)
		if host == "" || strings.Trim(host, "abcdefghijklmnopqrstuvwxyz0123456789.-_") != "" {
			return "", fmt.Errorf("invalid peer address %q: host %q is neither an IP nor a DNS name", s, host)
		}
	}
	return net.JoinHostPort(host, strconv.FormatUint(p, 10)), nil
}
