package server

// Forwarding to the pod that owns a device (cluster mode, Options.Cluster).
//
// A pod validates a whole request first, as it always does, then splits it
// by owner (rendezvous hashing over its membership view): its own part goes
// to its shards, and each other owner gets requests with its samples,
// marked with hdrForwarded. A marked request is never forwarded again: the
// receiver applies it whole if it owns, or still holds, every device in
// it, and refuses it whole with 421 otherwise. A part refused with 421, or
// after which nothing of it can have been applied (see notApplied), is
// tried once more after the view is refreshed at once; what still fails,
// or failed otherwise, is answered with the indexes that were applied, so
// a client can resend the rest. A part whose owner took it but did not
// answer in time may or may not be applied: it is not retried (that could
// apply it twice), and the error says so. docs/cluster.md has the whole
// protocol.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"
	"ai-load-service/shard/detect"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// hdrForwarded marks a request one member forwarded to another; its value
// is the sender's address.
const hdrForwarded = "X-Aiload-Forwarded"

// forwarder sends parts of requests to their owners.
type forwarder struct {
	creds   *Credentials // signs what it sends; nil: no credentials
	members *cluster.Membership
	client  *fasthttp.Client
	timeout time.Duration
	ms      *metrics.Set
	mu      sync.Mutex // guards the per-peer metrics below, created on first use
	byPeer  map[string]*peerMetrics
	// prunedAt is the view (by Seq) byPeer was last pruned to.
	prunedAt uint64
	// refreshing is set while refreshSoon's refresh runs. (It ends by the
	// membership's Stop, which ends any Refresh waiting.)
	refreshing atomic.Bool
}

type peerMetrics struct {
	ok, misdirected, failed, ambiguous *metrics.Counter
	duration                           *metrics.PrometheusHistogram
}

// newForwarder sends with timeout; idle is the members' IDLE_TIMEOUT
// (taken to be this pod's), after which they close a kept-alive
// connection.
func newForwarder(m *cluster.Membership, timeout, idle time.Duration, ms *metrics.Set) *forwarder {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	keep := 30 * time.Second
	if idle > 0 {
		keep = min(keep, idle/2) // drop connections before the peer does
	}
	return &forwarder{
		members: m, timeout: timeout, ms: ms, byPeer: map[string]*peerMetrics{},
		// Pod addresses, not a Service name: fasthttp caches DNS. Beyond
		// 512 connections to a peer a part waits for one (up to timeout)
		// rather than fail at once. LIFO hands out the connection used
		// last, the least likely to have been closed by the peer.
		client: &fasthttp.Client{Name: "ai-load-service", MaxConnsPerHost: 512, MaxConnWaitTimeout: timeout,
			ReadTimeout: timeout, WriteTimeout: timeout, MaxIdleConnDuration: keep, ConnPoolStrategy: fasthttp.LIFO,
			RetryIfErr: retryClosed},
	}
}

// retryClosed has fasthttp send a request again, on another connection,
// when the peer closed the one it used before answering a byte: a kept-
// alive connection the peer closed as idle, or at its shutdown, which it
// never read the request from. (A member closes a connection it read a
// request from only after answering it, unless it crashes; see
// docs/cluster.md.)
func retryClosed(_ *fasthttp.Request, _ int, err error) (resetTimeout, retry bool) {
	return false, errors.Is(err, io.EOF) || isOp(err, "write")
}

// isOp reports a network error of operation op ("dial", "write").
func isOp(err error, op string) bool {
	var e *net.OpError
	return errors.As(err, &e) && e.Op == op
}

// suspectFor is how long a member that refused a connection stays out of
// the view, unless heard from or dropped by the source sooner.
const suspectFor = 5 * time.Second

// refused takes member out of the view for a while if err says nothing
// listens at its address: the retry goes to the member that owns its
// devices without it, not to it again until the peer source drops it (in
// Kubernetes, seconds after a crash).
func (f *forwarder) refused(member string, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		f.members.Suspect(member, time.Now().Add(suspectFor))
	}
}

// hdrSuspects lists, on a forwarded request, the members its sender took
// out of its view because they refused connections: the receiver takes
// them out too, so the two agree on who owns their devices (otherwise the
// receiver, still counting a dead member, refuses the part with 421).
const hdrSuspects = "X-Aiload-Suspects"

// mark marks a request to another member: forwarded by self, with self's
// suspects, each as member@unix-ms it comes back (so passing a suspicion
// on never makes it last longer).
func (f *forwarder) mark(req *fasthttp.Request, self string, auth []byte) {
	req.Header.Set(hdrForwarded, self)
	f.creds.sign(req, auth)
	if s := f.members.Suspects(); len(s) > 0 {
		var b []byte
		for i, x := range s {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, x.Member...)
			b = append(b, '@')
			b = strconv.AppendInt(b, x.Until.UnixMilli(), 10)
		}
		req.Header.SetBytesV(hdrSuspects, b)
	}
}

// heard brings the member that sent a marked request back into the view,
// in case it was suspected (it is alive), and takes out those it suspects,
// until the times it gives. Call it before reading the view the request is
// decided on.
func (f *forwarder) heard(ctx *fasthttp.RequestCtx) {
	from := string(ctx.Request.Header.Peek(hdrForwarded))
	if from == "" {
		return
	}
	f.members.Unsuspect(from)
	if list := ctx.Request.Header.Peek(hdrSuspects); len(list) > 0 {
		for _, x := range strings.Split(string(list), ",") {
			m, at, ok := strings.Cut(x, "@")
			ms, err := strconv.ParseInt(at, 10, 64)
			if !ok || err != nil || m == from {
				continue
			}
			// Never past suspectFor from now, whatever the sender says.
			f.members.Suspect(m, time.UnixMilli(min(ms, time.Now().Add(suspectFor).UnixMilli())))
		}
	}
}

// refreshSoon refreshes the view in the background, at most one at a time:
// a peer's request says the views disagree.
func (f *forwarder) refreshSoon() {
	if !f.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer f.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		defer cancel()
		_ = f.members.Refresh(ctx)
	}()
}

// peer returns addr's metrics, created on first use. Series of members
// that left the view are dropped first: with PEERS_DNS each restarted pod
// has a new address, and they grew without end.
func (f *forwarder) peer(addr string) *peerMetrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pruneLocked()
	p := f.byPeer[addr]
	if p == nil {
		c := func(status string) *metrics.Counter {
			return f.ms.GetOrCreateCounter(peerSeries("forwarded_requests_total", addr, status))
		}
		p = &peerMetrics{ok: c(peerResults[0]), misdirected: c(peerResults[1]), failed: c(peerResults[2]), ambiguous: c(peerResults[3]),
			duration: f.ms.GetOrCreatePrometheusHistogramExt(peerSeries("forward_duration_seconds", addr, ""), durationBuckets)}
		f.byPeer[addr] = p
	}
	return p
}

// peerResults are the result labels of forwarded_requests_total.
var peerResults = []string{"ok", "misdirected", "unreachable", "no_answer"}

func peerSeries(name, addr, result string) string {
	if result == "" {
		return fmt.Sprintf(`%s{peer=%q}`, name, addr)
	}
	return fmt.Sprintf(`%s{peer=%q,result=%q}`, name, addr, result)
}

// prune drops the series of members that left the view; /metrics calls
// it, so they go even when nothing is forwarded.
func (f *forwarder) prune() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pruneLocked()
}

func (f *forwarder) pruneLocked() {
	v := f.members.View()
	if v.Seq == f.prunedAt {
		return
	}
	f.prunedAt = v.Seq
	for addr := range f.byPeer {
		if _, in := slices.BinarySearch(v.Members, addr); in {
			continue
		}
		for _, r := range peerResults {
			f.ms.UnregisterMetric(peerSeries("forwarded_requests_total", addr, r))
		}
		f.ms.UnregisterMetric(peerSeries("forward_duration_seconds", addr, ""))
		delete(f.byPeer, addr)
	}
}

// reply is what an owner answers a forwarded ingest part (see
// applyForwarded), or the error it refused the part with.
type reply struct {
	anomalies []placed // at: the sample's index in the part
	head      shard.StreamHead
	hasHead   bool
	err       string
	// A 421 for a part applied in part: the indexes applied, and the
	// samples whose devices were handed over, with where.
	applied []int
	moved   []movedTo
}

// outcome of one part sent to an owner.
type outcome int

const (
	partOK        outcome = iota
	partRetry             // nothing of it applied (421, or the owner not dialled): try again
	partAmbiguous         // sent, no answer: it may have been applied
	partRefused           // the owner answered an error: nothing of it applied
)

// send forwards the samples idx of b to owner and reports the outcome.
func (f *forwarder) send(owner, self string, body, auth []byte) (outcome, *reply, int, string) {
	p := f.peer(owner)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + owner + "/api/v1/ingest")
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	f.mark(req, self, auth)
	req.SetBodyRaw(body)
	start := time.Now()
	err := f.client.DoTimeout(req, resp, f.timeout)
	p.duration.UpdateDuration(start)
	switch {
	case err != nil && notApplied(err):
		p.failed.Inc()
		f.refused(owner, err)
		return partRetry, nil, 0, fmt.Sprintf("member %s could not be reached: %v", owner, err)
	case err != nil:
		p.ambiguous.Inc()
		return partAmbiguous, nil, 0, fmt.Sprintf("member %s took the samples but did not answer (%v): they may or may not have been applied", owner, err)
	case resp.StatusCode() == fasthttp.StatusMisdirectedRequest:
		p.misdirected.Inc()
		var r reply
		var sc scanner
		if sc.reply(resp.Body(), &r) != nil || len(r.applied) == 0 && len(r.moved) == 0 {
			return partRetry, nil, 0, fmt.Sprintf("member %s does not own them", owner)
		}
		return partRetry, &r, 0, fmt.Sprintf("member %s: %s", owner, r.err) // applied in part
	}
	var r reply
	var sc scanner
	if err := sc.reply(resp.Body(), &r); err != nil {
		p.ambiguous.Inc()
		return partAmbiguous, nil, 0, fmt.Sprintf("member %s answered %d with an unreadable body: %v", owner, resp.StatusCode(), err)
	}
	if resp.StatusCode() == fasthttp.StatusUnauthorized {
		// This pod took the client's credential and its member did not:
		// the pods' tokens differ (a rotation half done), which is not
		// the client's to fix.
		p.failed.Inc()
		return partRefused, nil, fasthttp.StatusServiceUnavailable,
			fmt.Sprintf("member %s refused this member's credential (CLUSTER_TOKEN or INGEST_TOKENS differ between the pods): %s", owner, r.err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		p.failed.Inc()
		return partRefused, nil, resp.StatusCode(), fmt.Sprintf("member %s: %s", owner, r.err)
	}
	p.ok.Inc()
	return partOK, &r, 0, ""
}

// notApplied reports an error after which nothing of a part can have been
// applied: no connection was made, or none was free in time, the request
// was not written whole, or the peer closed the connection before
// answering (after retryClosed's tries; see there).
func notApplied(err error) bool {
	return errors.Is(err, fasthttp.ErrDialTimeout) || isOp(err, "dial") || isOp(err, "write") ||
		errors.Is(err, fasthttp.ErrNoFreeConns) || errors.Is(err, fasthttp.ErrConnectionClosed)
}

// placed is an anomaly of the whole request with its sample's index there.
type placed struct {
	at int
	a  shard.Anomaly
}

// applyCluster applies a decoded request in cluster mode; see the top of
// the file. st.batch holds the request; encode writes the 200 answer.
func (h *Handler) applyCluster(ctx *fasthttp.RequestCtx, st *ingestState, encode func([]byte, *shard.Batch) []byte) error {
	b := &st.batch
	if len(ctx.Request.Header.Peek(hdrForwarded)) > 0 {
		h.fwd.heard(ctx) // its suspects decide this request too
		return h.applyForwarded(ctx, st, h.fwd.members.View())
	}
	view := h.fwd.members.View()
	n := b.Len()
	remote := false
	for i := 0; i < n && !remote; i++ { // nothing allocated while all is local
		o, err := h.ownerHere(view, b.Device(i))
		if err != nil {
			return err
		}
		remote = o != view.Self
	}
	// The client's credential, for the owners to check when there is no
	// CLUSTER_TOKEN (a copy: Peek is not safe for the parts' goroutines).
	sp := spread{tries: 2, auth: slices.Clone(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))}
	if !remote {
		if err := h.set.Ingest(b); err != nil {
			return err
		}
		h.count(b)
		if len(b.Moved()) == 0 {
			st.out = encode(st.out[:0], b)
			ctx.SetContentType("application/json")
			ctx.SetBody(st.out)
			return nil
		}
		// Some devices were handed over since ownerHere: send those
		// samples on to their new owners.
		sp.alloc(n)
		for i := range sp.applied {
			sp.applied[i] = true
		}
		for _, m := range b.Moved() {
			sp.applied[m.Sample] = false
			sp.moved(int32(m.Sample), m.To)
		}
		for _, a := range b.Anomalies {
			sp.found = append(sp.found, placed{a.Sample(), a})
		}
		if sp.applied[0] {
			hd := b.Head
			sp.head = &hd
		}
		for i, to := range sp.to { // the first send goes where they went
			sp.owner[i] = to
		}
		clear(sp.to)
		sp.retry = sp.retry[:0]
	} else {
		sp.alloc(n)
		for i := range n {
			o, err := h.ownerHere(view, b.Device(i))
			if err != nil {
				return err
			}
			sp.owner[i] = o
		}
		sp.pending = make([]int32, n)
		for i := range sp.pending {
			sp.pending[i] = int32(i)
		}
	}
	for attempt := 0; attempt < sp.tries && len(sp.pending) > 0; attempt++ {
		if attempt > 0 && sp.refresh {
			rctx, cancel := context.WithTimeout(context.Background(), h.fwd.timeout)
			_ = h.fwd.members.Refresh(rctx) // the view as of now, or the old one
			cancel()
			view = h.fwd.members.View()
		}
		if attempt > 0 {
			var err error
			for _, i := range sp.pending {
				if to, ok := sp.to[i]; ok {
					sp.owner[i] = to // handed over: its owner said where
					continue
				}
				if sp.owner[i], err = h.ownerHere(view, b.Device(int(i))); err != nil {
					break
				}
			}
			if err != nil { // stopping: part of the request may be applied already
				sp.final = append(sp.final, err.Error())
				sp.status = cmp.Or(sp.status, statusOf(err))
				break
			}
			clear(sp.to)
			sp.retry = sp.retry[:0]
			sp.refresh = false
		}
		h.sendParts(st, view, &sp)
	}
	if problems := append(sp.final, sp.retry...); len(problems) > 0 {
		return &partialError{status: cmp.Or(sp.status, fasthttp.StatusServiceUnavailable), msg: problems[0], applied: sp.applied}
	}
	slices.SortStableFunc(sp.found, func(x, y placed) int { return x.at - y.at })
	b.Anomalies = b.Anomalies[:0]
	for _, p := range sp.found {
		b.Anomalies = append(b.Anomalies, p.a)
	}
	if sp.head != nil {
		b.Head = *sp.head
	}
	st.out = encode(st.out[:0], b)
	ctx.SetContentType("application/json")
	ctx.SetBody(st.out)
	return nil
}

// spread is the state of one request applyCluster sends to its owners.
type spread struct {
	auth    []byte   // the client's Authorization header value
	owner   []string // by sample: the member to send it to this attempt
	applied []bool   // by sample
	pending []int32  // samples to send this attempt, sorted
	to      map[int32]string
	found   []placed
	head    *shard.StreamHead
	status  int
	// final are failures a retry cannot mend (a part refused, or sent and
	// not answered); retry, this attempt's parts that may go again.
	final, retry []string
	tries        int  // attempts allowed: 2, or 3 once a device was found handed over
	refresh      bool // the next attempt refreshes the view first
}

func (sp *spread) alloc(n int) {
	sp.owner, sp.applied, sp.to = make([]string, n), make([]bool, n), map[int32]string{}
}

// moved notes that sample i's device was handed over to member to: the
// next attempt sends it there, without waiting for the view to say so.
func (sp *spread) moved(i int32, to string) {
	sp.pending = append(sp.pending, i)
	sp.to[i] = to
	sp.retry = append(sp.retry, fmt.Sprintf("device was handed over to member %s meanwhile", to))
	sp.tries = max(sp.tries, 3)
}

// sendParts runs one attempt: sp.pending's samples go to their owners (this
// pod's own to its shards), and what may go again is left in sp.pending.
func (h *Handler) sendParts(st *ingestState, view *cluster.View, sp *spread) {
	b := &st.batch
	byOwner := map[string][]int32{}
	for _, i := range sp.pending {
		byOwner[sp.owner[i]] = append(byOwner[sp.owner[i]], i)
	}
	sp.pending = sp.pending[:0]
	type result struct {
		idx  []int32
		out  outcome
		r    *reply
		code int
		msg  string
	}
	var local []int32
	var parts []chunk
	var to []string // parts[k] goes to to[k]
	for o, idx := range byOwner {
		switch o {
		case view.Self:
			local = idx
			continue
		case "":
			sp.pending = append(sp.pending, idx...)
			sp.retry = append(sp.retry, fmt.Sprintf("this member's view has no members to send %d samples to (it is leaving, or its peer source lists none)", len(idx)))
			sp.refresh = true
			continue
		}
		for _, c := range h.fwd.split(b, idx, h.opts.MaxBodyBytes) {
			parts = append(parts, c)
			to = append(to, o)
		}
	}
	results := make(chan result, len(parts))
	sent := len(parts)
	for k, c := range parts {
		go func() {
			out, r, code, msg := h.fwd.send(to[k], view.Self, c.body, sp.auth)
			results <- result{c.idx, out, r, code, msg}
		}()
	}
	if local != nil {
		as, hd, moved, err := h.applyPart(st, local)
		if err != nil {
			sp.final = append(sp.final, err.Error())
			sp.status = cmp.Or(sp.status, statusOf(err))
		} else {
			for _, i := range local {
				sp.applied[i] = true
			}
			for _, m := range moved {
				sp.applied[m.at] = false
				sp.moved(int32(m.at), m.to)
			}
			sp.found = append(sp.found, as...)
			if local[0] == 0 && sp.applied[0] {
				sp.head = hd
			}
		}
	}
	for range sent {
		res := <-results
		if res.r != nil { // answered, in whole or in part
			done := res.r.applied
			if res.out == partOK {
				done = nil
				for k := range res.idx {
					done = append(done, k)
				}
			}
			for _, k := range done {
				if k >= 0 && k < len(res.idx) {
					sp.applied[res.idx[k]] = true
				}
			}
			for _, p := range res.r.anomalies {
				if p.at >= 0 && p.at < len(res.idx) {
					sp.found = append(sp.found, placed{int(res.idx[p.at]), p.a})
				}
			}
			if res.idx[0] == 0 && res.r.hasHead && sp.applied[0] {
				sp.head = &res.r.head
			}
		}
		switch res.out {
		case partOK:
		case partRetry:
			moved := map[int]string{}
			if res.r != nil {
				for _, m := range res.r.moved {
					moved[m.at] = m.to
				}
			}
			for k, i := range res.idx {
				switch {
				case sp.applied[i]:
				case moved[k] != "":
					sp.moved(i, moved[k])
				default:
					sp.pending = append(sp.pending, i)
					sp.refresh = true
				}
			}
			if len(moved) == 0 {
				sp.retry = append(sp.retry, res.msg)
			}
		default:
			sp.final = append(sp.final, res.msg)
			sp.status = cmp.Or(sp.status, res.code)
		}
	}
	slices.Sort(sp.pending)
}

// ownerHere is the member that applies samples of device sent to this
// one: its owner by view, or this member if it left its own view (it is
// draining) and still holds the device, for the others may still send it
// there. "" when no member can: the view is empty.
func (h *Handler) ownerHere(view *cluster.View, device []byte) (string, error) {
	o := view.Owner(device)
	if o == view.Self || view.HasSelf() {
		return o, nil
	}
	held, _, err := h.set.Held(string(device))
	if held {
		return view.Self, err
	}
	return o, err
}

// chunk is a part of a request for one owner, encoded.
type chunk struct {
	idx  []int32
	body []byte
}

// split encodes the samples idx of b for their owner, in as many requests
// as keep each body within limit (the owner's MAX_BODY_BYTES, taken to be
// this pod's): a forwarded body can be larger than the client's, since
// every sample carries its ts and values are written in Go's form.
func (f *forwarder) split(b *shard.Batch, idx []int32, limit int) []chunk {
	body := appendForward(make([]byte, 0, 96*len(idx)), b, idx)
	if len(body) <= limit || len(idx) == 1 {
		return []chunk{{idx, body}}
	}
	half := len(idx) / 2
	return append(f.split(b, idx[:half], limit), f.split(b, idx[half:], limit)...)
}

// applyPart applies the samples idx of st.batch here, and returns their
// anomalies placed at their index in st.batch, the head of the first, and
// the samples not applied because their device was handed over.
func (h *Handler) applyPart(st *ingestState, idx []int32) ([]placed, *shard.StreamHead, []movedTo, error) {
	part := &st.part
	part.Reset()
	part.SetReceived(st.batch.Received())
	for _, i := range idx {
		part.AppendSample(&st.batch, int(i))
	}
	if err := h.set.Ingest(part); err != nil {
		return nil, nil, nil, err
	}
	h.count(part)
	out := make([]placed, len(part.Anomalies))
	for k := range part.Anomalies {
		out[k] = placed{int(idx[part.Anomalies[k].Sample()]), part.Anomalies[k]}
	}
	var moved []movedTo
	for _, m := range part.Moved() {
		moved = append(moved, movedTo{int(idx[m.Sample]), m.To})
	}
	hd := part.Head
	return out, &hd, moved, nil
}

// movedTo is a sample whose device was handed over to member to.
type movedTo struct {
	at int
	to string
}

// applyForwarded applies a request another member forwarded, whole, if
// this pod owns or holds each of its devices, and refuses it whole (421)
// otherwise; it is never forwarded again. The answer places each anomaly
// by its sample index and carries the first sample's head.
func (h *Handler) applyForwarded(ctx *fasthttp.RequestCtx, st *ingestState, view *cluster.View) error {
	b := &st.batch
	for i := range b.Len() {
		if view.Owner(b.Device(i)) == view.Self {
			continue
		}
		held, movedTo, err := h.set.Held(string(b.Device(i)))
		if err != nil {
			return err
		}
		if !held && movedTo == "" {
			h.fwd.refreshSoon() // the sender's view and this one disagree
			return errorf(fasthttp.StatusMisdirectedRequest, "device %q is not owned here by this member's view (%d members); refresh the view and send it to its owner",
				b.Device(i), len(view.Members))
		}
	}
	if err := h.set.Ingest(b); err != nil {
		return err
	}
	h.count(b)
	dst := st.out[:0]
	if moved := b.Moved(); len(moved) > 0 {
		// Handed over between the check above and the shards: the rest
		// is applied; the sender sends these on (see spread.moved).
		ctx.SetStatusCode(fasthttp.StatusMisdirectedRequest)
		dst = append(dst, `{"error":`...)
		dst = appendString(dst, fmt.Sprintf("device %q was handed over to member %s; the samples in applied were applied", b.Device(moved[0].Sample), moved[0].To))
		dst = append(dst, `,"applied":[`...)
		first := true
		for i, k := 0, 0; i < b.Len(); i++ {
			if k < len(moved) && moved[k].Sample == i {
				k++
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = strconv.AppendInt(dst, int64(i), 10)
		}
		dst = append(dst, `],"moved":[`...)
		for k, m := range moved {
			if k > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"sample":`...)
			dst = strconv.AppendInt(dst, int64(m.Sample), 10)
			dst = append(dst, `,"to":`...)
			dst = appendString(dst, m.To)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	} else {
		dst = append(dst, `{"accepted":`...)
		dst = strconv.AppendInt(dst, int64(b.Len()), 10)
	}
	dst = append(dst, `,"anomalies":`...)
	dst = appendAnomalyList(dst, b.Anomalies, true)
	dst = append(dst, `,"head":{"Window":`...)
	dst = strconv.AppendInt(dst, int64(b.Head.Window), 10)
	dst = append(dst, `,"Size":`...)
	dst = strconv.AppendInt(dst, int64(b.Head.Size), 10)
	dst = append(dst, `,"Mean":`...)
	dst = appendFloat(dst, b.Head.Mean)
	dst = append(dst, "}}\n"...)
	st.out = dst
	ctx.SetContentType("application/json")
	ctx.SetBody(st.out)
	return nil
}

// partialError is a request applied in part: the status, the first
// problem, and which samples were applied, for the client to resend the
// rest.
type partialError struct {
	status  int
	msg     string
	applied []bool
}

func (e *partialError) Error() string { return e.msg }

// forwardRead answers a read of device id with its owner's answer when
// another member owns it (done true). A forwarded read is answered here if
// this pod owns or holds the device, and refused (421) otherwise; reads
// load devices, so answering it anyway would make a second copy.
func (h *Handler) forwardRead(ctx *fasthttp.RequestCtx, id string) (done bool, err error) {
	if h.fwd == nil {
		return false, nil
	}
	if len(ctx.Request.Header.Peek(hdrForwarded)) > 0 {
		h.fwd.heard(ctx)
	}
	view := h.fwd.members.View()
	if len(ctx.Request.Header.Peek(hdrForwarded)) > 0 {
		if view.Owner([]byte(id)) == view.Self {
			return false, nil // a tombstone here answers with movedRead
		}
		held, movedTo, err := h.set.Held(id)
		if err != nil || held {
			return err != nil, err
		}
		if movedTo != "" {
			return true, h.movedRead(ctx, id, &shard.MovedError{Device: id, To: movedTo})
		}
		return true, errorf(fasthttp.StatusMisdirectedRequest, "device %q is not owned here by this member's view; refresh the view and ask its owner", id)
	}
	var last string
	for attempt := range 2 {
		if attempt > 0 { // reads change nothing: any failure can be retried
			rctx, cancel := context.WithTimeout(context.Background(), h.fwd.timeout)
			_ = h.fwd.members.Refresh(rctx)
			cancel()
			view = h.fwd.members.View()
			last = "" // only the last attempt's failure counts
		}
		owner, err := h.ownerHere(view, []byte(id))
		switch {
		case err != nil:
			return true, err
		case owner == view.Self:
			return false, nil
		case owner == "":
			last = "this member's view has no members (it is leaving, or its peer source lists none)"
			continue
		}
		var here bool
		if last, here = h.fwd.readChain(ctx, owner, view.Self); here {
			return false, nil
		}
		if last == "" {
			return true, nil
		}
	}
	return true, errorf(fasthttp.StatusServiceUnavailable, "the owner of device %q cannot answer: %s; retry", id, last)
}

// readChain asks owner the read ctx holds, following the members a device
// was handed on to (at most maxHops): failed says why it could not be
// answered; here, that the device was handed to this member (read it
// here).
func (f *forwarder) readChain(ctx *fasthttp.RequestCtx, owner, self string) (failed string, here bool) {
	for hop := 0; ; hop++ {
		failed, next := f.read(ctx, owner, self)
		switch {
		case next == self:
			return "", true
		case next == "" || hop == maxHops:
			return failed, false
		}
		owner = next
	}
}

// maxHops bounds the handoffs a read follows: a device moves once per view
// change, and views change seconds apart.
const maxHops = 3

// read asks owner the read ctx holds and answers ctx with its answer, or
// returns why it could not, and where the device went if owner handed it
// on.
func (f *forwarder) read(ctx *fasthttp.RequestCtx, owner, self string) (failed, movedTo string) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	// The path as sent, escapes kept, whatever the request line's form
	// (absolute form carries a scheme and host).
	req.SetRequestURI("http://" + owner + string(ctx.URI().PathOriginal()))
	req.URI().SetQueryStringBytes(ctx.URI().QueryString())
	f.mark(req, self, ctx.Request.Header.Peek(fasthttp.HeaderAuthorization))
	start := time.Now()
	err := f.client.DoTimeout(req, resp, f.timeout)
	p := f.peer(owner)
	p.duration.UpdateDuration(start)
	switch {
	case err != nil:
		p.failed.Inc()
		f.refused(owner, err)
		return fmt.Sprintf("member %s could not be asked: %v", owner, err), ""
	case resp.StatusCode() == fasthttp.StatusMisdirectedRequest:
		p.misdirected.Inc()
		if to := string(resp.Header.Peek(hdrMovedTo)); to != "" {
			return fmt.Sprintf("member %s handed it to %s", owner, to), to
		}
		return fmt.Sprintf("member %s does not own it", owner), ""
	case resp.StatusCode() == fasthttp.StatusUnauthorized:
		// As for a forwarded part (send): the client's credential was
		// good here; the pods' tokens differ.
		p.failed.Inc()
		return fmt.Sprintf("member %s refused this member's credential (CLUSTER_TOKEN or INGEST_TOKENS differ between the pods)", owner), ""
	}
	p.ok.Inc()
	ctx.SetStatusCode(resp.StatusCode())
	ctx.SetContentType("application/json")
	ctx.SetBody(resp.Body())
	return "", ""
}

// movedRead answers a read whose device this pod handed over (err is a
// *shard.MovedError) with the new owner's answer: a marked read is refused
// (421), as one for a device not held. Other errors are returned as they
// are.
func (h *Handler) movedRead(ctx *fasthttp.RequestCtx, id string, err error) error {
	var m *shard.MovedError
	if h.fwd == nil || !errors.As(err, &m) {
		return err
	}
	if len(ctx.Request.Header.Peek(hdrForwarded)) > 0 {
		ctx.Response.Header.Set(hdrMovedTo, m.To) // the sender asks it next
		return errorf(fasthttp.StatusMisdirectedRequest, "device %q was handed over to member %s; ask it", id, m.To)
	}
	failed, here := h.fwd.readChain(ctx, m.To, h.fwd.members.View().Self)
	if here {
		failed = "it was handed back here meanwhile"
	}
	if failed != "" {
		return errorf(fasthttp.StatusServiceUnavailable, "device %q was handed over to member %s, which cannot answer: %s; retry", id, m.To, failed)
	}
	return nil
}

// summarize adds every other member's /analyze?scope=local to s and
// returns the members that did not answer.
func (f *forwarder) summarize(s *shard.Summary, auth []byte) (unreachable []string) {
	view := f.members.View()
	type part struct {
		member string
		a      analyzeBody
		err    error
	}
	parts := make(chan part, len(view.Members))
	asked := 0
	for _, m := range view.Members {
		if m == view.Self {
			continue
		}
		asked++
		go func() {
			var a analyzeBody
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + m + "/analyze?scope=local")
			f.mark(req, view.Self, auth) // credentials, as every request to a member
			err := f.client.DoTimeout(req, resp, f.timeout)
			if err == nil && resp.StatusCode() != fasthttp.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode())
			}
			if err == nil {
				err = json.Unmarshal(resp.Body(), &a)
			}
			parts <- part{m, a, err}
		}()
	}
	for range asked {
		p := <-parts
		if p.err != nil {
			unreachable = append(unreachable, p.member)
			continue
		}
		s.Merge(shard.Summary{Devices: p.a.Devices, Streams: p.a.Streams, Samples: p.a.TotalMetrics, Anomalies: p.a.AnomalyCount,
			Values: p.a.WindowValues, Mean: p.a.RollingAverage, Stddev: p.a.StdDev, Min: p.a.Min, Max: p.a.Max})
	}
	slices.Sort(unreachable)
	return unreachable
}

// analyzeBody is what /analyze answers, as far as a merge needs.
type analyzeBody struct {
	RollingAverage float64 `json:"rolling_average"`
	StdDev         float64 `json:"std_dev"`
	Min            float64 `json:"min"`
	Max            float64 `json:"max"`
	AnomalyCount   uint64  `json:"anomaly_count"`
	TotalMetrics   uint64  `json:"total_metrics"`
	Devices        int     `json:"devices"`
	Streams        int     `json:"streams"`
	WindowValues   int     `json:"window_values"`
}

// clusterInfo serves GET /api/v1/cluster: this pod's view, and the devices
// it holds in memory (owned or not, so a stale copy shows).
func (h *Handler) clusterInfo(ctx *fasthttp.RequestCtx) error {
	b := []byte(`{"cluster":`)
	b = strconv.AppendBool(b, h.fwd != nil)
	b = append(b, `,"devices":`...)
	b = strconv.AppendInt(b, int64(h.set.Devices()), 10)
	if h.fwd != nil {
		v := h.fwd.members.View()
		b = append(b, `,"self":`...)
		b = appendString(b, v.Self)
		b = append(b, `,"members":[`...)
		for i, m := range v.Members {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, m)
		}
		b = append(b, `],"in_view":`...)
		b = strconv.AppendBool(b, v.HasSelf())
		b = append(b, `,"view_seq":`...)
		b = strconv.AppendUint(b, v.Seq, 10)
		b = append(b, `,"view_changed_ts":`...)
		b = strconv.AppendInt(b, v.Changed.UnixMilli(), 10)
	}
	b = append(b, "}\n"...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	return nil
}

// appendForward appends samples idx of b as an ingest body for the pod
// that owns their devices: every ts explicit (a missing one was this pod's
// receive time, which the owner must apply too) and every value in the
// shortest form that parses back to the same float64.
func appendForward(dst []byte, b *shard.Batch, idx []int32) []byte {
	dst = append(dst, '[')
	for k, i := range idx {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"device":`...)
		dst = appendString(dst, b.Device(int(i)))
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, b.TS(int(i)), 10)
		dst = append(dst, `,"metrics":{`...)
		for j := range b.SampleMetrics(int(i)) {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, b.MetricName(int(i), j))
			dst = append(dst, ':')
			dst = strconv.AppendFloat(dst, b.Value(int(i), j), 'g', -1, 64)
		}
		dst = append(dst, "}}"...)
	}
	return append(dst, ']')
}

// reply reads an owner's answer to a forwarded part with the ingest
// scanner, keeping encoding/json off the ingest path. Fields it does not
// know are skipped; a float written as null (appendFloat's NaN) reads NaN.
func (s *scanner) reply(body []byte, r *reply) *Error {
	s.buf, s.pos = body, 0
	s.ws()
	if s.peek() != '{' {
		return s.syntax("an object")
	}
	e := s.object(func(key []byte) *Error {
		switch string(key) {
		case "anomalies":
			return s.list(func(int) *Error {
				var p placed
				p.at = -1
				if e := s.fields(func(key []byte) *Error { return s.anomalyField(key, &p) }); e != nil {
					return e
				}
				r.anomalies = append(r.anomalies, p)
				return nil
			})
		case "head":
			r.hasHead = true
			return s.fields(func(key []byte) *Error {
				switch string(key) {
				case "Window":
					return s.int(&r.head.Window)
				case "Size":
					return s.int(&r.head.Size)
				case "Mean":
					return s.float(&r.head.Mean)
				}
				return s.skip(1)
			})
		case "error":
			return s.text(&r.err)
		case "applied":
			return s.list(func(int) *Error {
				var k int
				e := s.int(&k)
				r.applied = append(r.applied, k)
				return e
			})
		case "moved":
			return s.list(func(int) *Error {
				m := movedTo{at: -1}
				e := s.fields(func(key []byte) *Error {
					switch string(key) {
					case "sample":
						return s.int(&m.at)
					case "to":
						return s.text(&m.to)
					}
					return s.skip(1)
				})
				r.moved = append(r.moved, m)
				return e
			})
		}
		return s.skip(1)
	})
	if e != nil {
		return e
	}
	return s.end()
}

func (s *scanner) anomalyField(key []byte, p *placed) *Error {
	switch string(key) {
	case "device":
		return s.text(&p.a.Device)
	case "metric":
		return s.text(&p.a.Metric)
	case "ts":
		raw, e := s.num()
		if e != nil {
			return e
		}
		ts, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return s.syntax("an integer timestamp")
		}
		p.a.TS = ts
		return nil
	case "value":
		return s.float(&p.a.Value)
	case "mean":
		return s.float(&p.a.Mean)
	case "stddev":
		return s.float(&p.a.Stddev)
	case "z":
		return s.float(&p.a.Z)
	case "reason":
		var why string
		if e := s.text(&why); e != nil {
			return e
		}
		r, ok := detect.ParseReason(why)
		if !ok {
			return s.syntax("an alert reason")
		}
		p.a.Reason = r
		return nil
	case "sample":
		return s.int(&p.at)
	}
	return s.skip(1)
}

// list reads an array at pos (see array).
func (s *scanner) list(elem func(i int) *Error) *Error {
	if s.peek() != '[' {
		return s.syntax("an array")
	}
	return s.array(elem)
}

// fields reads an object at pos (see object).
func (s *scanner) fields(field func(key []byte) *Error) *Error {
	if s.peek() != '{' {
		return s.syntax("an object")
	}
	return s.object(field)
}

// text reads a string into v.
func (s *scanner) text(v *string) *Error {
	if s.peek() != '"' {
		return s.syntax("a string")
	}
	b, e := s.str()
	*v = string(b)
	return e
}

// int reads a non-negative integer into v.
func (s *scanner) int(v *int) *Error {
	n, ok := s.uint()
	if !ok {
		return s.syntax("a non-negative integer")
	}
	*v = int(n)
	return nil
}

// float reads a number, or null as NaN, into v.
func (s *scanner) float(v *float64) *Error {
	if s.peek() == 'n' {
		*v = math.NaN()
		return s.literal("null")
	}
	raw, e := s.num()
	if e != nil {
		return e
	}
	f, ok := parseFloat(raw)
	if !ok {
		return s.syntax("a number")
	}
	*v = f
	return nil
}
