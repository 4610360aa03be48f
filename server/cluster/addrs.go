package cluster

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// memberAddrs knows the addresses of the listed members: IPs as listed,
// host names as the resolver goroutine last looked them up. Looking names
// up never delays a refresh: the view does not depend on it, only
// IsMember (the MAX_CONNS_PER_IP exemption) does.
type memberAddrs struct {
	mu    sync.Mutex
	ips   []netip.Addr            // guarded by mu: the listed IPs
	names []string                // guarded by mu: the listed host names
	hosts map[string][]netip.Addr // guarded by mu: each listed name's last answer (a failed lookup keeps it)
	set   atomic.Pointer[map[netip.Addr]struct{}]
	kick  chan struct{} // buffer 1: names to look up
	done  atomic.Uint64 // lookups of the names finished, for tests
}

// list takes the source's latest members: their IPs count at once, and
// their names are looked up by the resolver goroutine; a name no longer
// listed is forgotten with its addresses.
func (a *memberAddrs) list(members []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ips, a.names = a.ips[:0], a.names[:0]
	for _, member := range members {
		host, _, _ := net.SplitHostPort(member)
		if ip, err := netip.ParseAddr(host); err == nil {
			a.ips = append(a.ips, ip.Unmap())
		} else {
			a.names = append(a.names, host)
		}
	}
	for name := range a.hosts {
		if !slices.Contains(a.names, name) {
			delete(a.hosts, name)
		}
	}
	a.publishLocked()
	if len(a.names) > 0 {
		select {
		case a.kick <- struct{}{}:
		default: // a lookup is already asked for; it reads the names then
		}
	}
}

// resolved records the answers to a lookup of names (nil: it failed) for
// the names still listed.
func (a *memberAddrs) resolved(names []string, answers [][]netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hosts == nil {
		a.hosts = map[string][]netip.Addr{}
	}
	for i, name := range names {
		if answers[i] != nil && slices.Contains(a.names, name) {
			a.hosts[name] = answers[i]
		}
	}
	a.publishLocked()
}

func (a *memberAddrs) publishLocked() {
	set := make(map[netip.Addr]struct{}, len(a.ips))
	for _, ip := range a.ips {
		set[ip] = struct{}{}
	}
	for _, name := range a.names {
		for _, ip := range a.hosts[name] {
			set[ip.Unmap()] = struct{}{}
		}
	}
	a.set.Store(&set)
}

func (a *memberAddrs) has(ip netip.Addr) bool {
	p := a.set.Load()
	if p == nil {
		return false
	}
	_, ok := (*p)[ip.Unmap()]
	return ok
}

// resolver looks up the listed host names after each refresh that lists
// any, all at once within Options.Timeout, until Stop.
func (m *Membership) resolver() {
	defer m.wg.Done()
	a := &m.addrs
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-a.kick:
		}
		a.mu.Lock()
		names := slices.Clone(a.names)
		a.mu.Unlock()
		ctx, cancel := context.WithTimeout(m.ctx, m.opts.Timeout)
		answers := make([][]netip.Addr, len(names))
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Go(func() {
				if ips, err := m.opts.Resolver.LookupNetIP(ctx, "ip", name); err == nil {
					answers[i] = ips
				}
			})
		}
		wg.Wait()
		cancel()
		a.resolved(names, answers)
		a.done.Add(1)
	}
}
