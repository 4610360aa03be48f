package server

// Handoff: how a device's state moves to its new owner when the view
// changes. The new owner, on the first touch of a device it does not hold,
// loads it like a Redis restore (its samples wait, in order), but asks
// the members that may hold it first, all at once (View.Sources: its
// owners in the last views, then every listed member by weight). The holder
// hands the state over and keeps a tombstone (shard.Set.HandOff), so what
// still reaches it for the device goes on to the new owner. Redis is the
// fallback when no member has it. docs/cluster.md has the protocol and its
// failure cases.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
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

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// handoffPath is the members' route for taking a device over: POST the
// device ID as the body, the taker's address in hdrForwarded. Answers: 200
// with the snapshot; 204 when not held here (hdrMovedTo names the member it
// went to, if it was handed on); 409 while it is loading here.
const handoffPath = "/internal/v1/handoff"

// hdrMovedTo names the member a device was handed to.
const hdrMovedTo = "X-Aiload-Moved-To"

// Handoff is the shard.Store of a cluster member: it asks the members that
// may hold a device first, then Next (Redis), if any. Start it with the
// Set; Stop it after the Set.
type Handoff struct {
	creds   *Credentials // signs its asks; nil: none
	members *cluster.Membership
	next    shard.Store
	client  *fasthttp.Client
	timeout time.Duration
	log     zerolog.Logger
	set     *shard.Set

	mu    sync.Mutex
	queue []pull            // loads waiting for a worker; guarded by mu
	hints map[string]string // guarded by mu: device → the member that offered it (claim)
	// claims, guarded by mu, records for each offered device loaded
	// whether the offering member handed it over.
	claims map[string]bool
	// tokens, guarded by mu, keeps the token of a load that got no
	// answer from a member that may have handed the device over: the
	// next load asks with it again, and gets the state handed.
	tokens map[string]tokenAt
	wake   chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
	ended  bool // guarded by mu: Stop was called

	// offer offers the devices held here that others own to their owners
	// (Handler.HandOver), set by server.New; rebalance wakes the goroutine
	// that runs it after a change of view.
	offer     func(context.Context) (int, error)
	rebalance chan struct{}

	fromPeer, fromNext, none, busy *metrics.Counter
	unreachable                    *metrics.Counter // asks that reached no member
	warnedAt                       atomic.Int64     // unix ns of the last unreachable warning
	duration                       *metrics.Histogram
}

type pull struct {
	id   string
	done func(*shard.Snapshot, error)
}

// HandoffOptions configure a Handoff.
type HandoffOptions struct {
	Members *cluster.Membership
	Next    shard.Store   // where devices no member holds are loaded from; nil: they start fresh
	Timeout time.Duration // of one ask, and of waiting for a busy holder; zero: 2s
	Idle    time.Duration // the members' IDLE_TIMEOUT: connections are dropped before they would
	Log     zerolog.Logger
	Metrics *metrics.Set // required
	// Credentials sign the asks with the cluster token; nil: none.
	Credentials *Credentials
}

// handoffWorkers bounds the asks in flight: a scale-out moves a quarter of
// a large fleet, whose first samples arrive within a second.
const handoffWorkers = 64

// NewHandoff returns a Handoff; Start it before the Set serves.
func NewHandoff(o HandoffOptions) *Handoff {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	ms := o.Metrics
	c := func(result string) *metrics.Counter {
		return ms.NewCounter(fmt.Sprintf(`handoffs_in_total{from=%q}`, result))
	}
	keep := 10 * time.Second
	if o.Idle > 0 {
		keep = min(keep, o.Idle/2) // drop connections before the peer does
	}
	return &Handoff{creds: o.Credentials, members: o.Members, next: o.Next, timeout: o.Timeout, log: o.Log,
		// As the forwarder's: a connection the peer closed before reading
		// the request is retried on another (see retryClosed).
		client: &fasthttp.Client{Name: "ai-load-service", MaxConnsPerHost: handoffWorkers, MaxConnWaitTimeout: o.Timeout,
			ReadTimeout: o.Timeout, WriteTimeout: o.Timeout, MaxIdleConnDuration: keep, RetryIfErr: retryClosed},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), hints: map[string]string{}, rebalance: make(chan struct{}, 1),
		claims: map[string]bool{}, tokens: map[string]tokenAt{},
		fromPeer: c("member"), fromNext: c("store"), none: c("none"), busy: c("busy"),
		unreachable: ms.NewCounter("handoff_asks_unreachable_total"),
		duration:    ms.NewHistogram("handoff_in_duration_seconds"),
	}
}

// Start starts the workers and the sweeper of set's tombstones (a set
// without persistence has no Collect to do it).
func (hf *Handoff) Start(set *shard.Set) {
	hf.set = set
	for range handoffWorkers {
		hf.wg.Add(1)
		go hf.work()
	}
	hf.wg.Add(2)
	go hf.sweep(set.Options().Tombstone / 2)
	go hf.rebalancer()
}

// rebalancer offers what this member holds but no longer owns, after each
// change of view that leaves it some, so state moves soon after the view
// changes, not only when a device is touched. Offers that fail (the new
// owners did not listen yet) are made again, 2 s later and then doubling
// up to a minute, until one round succeeds.
func (hf *Handoff) rebalancer() {
	defer hf.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := 2 * time.Second
	for {
		select {
		case <-hf.stop:
			return
		case <-hf.rebalance:
			backoff = 2 * time.Second
		case <-retry.C:
		}
		if hf.offer == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), offerBudget)
		go func() { // Stop ends the offers in flight
			select {
			case <-hf.stop:
			case <-ctx.Done():
			}
			cancel()
		}()
		n, err := hf.offer(ctx)
		cancel()
		if err == nil {
			if n > 0 {
				hf.log.Info().Int("offered", n).Msg("devices owned by other members since the view changed offered to them")
			}
			continue
		}
		hf.log.Warn().Err(err).Int("offered", n).Dur("again_in", backoff).Msg("devices owned by other members not all taken; offering them again")
		retry.Reset(backoff)
		backoff = min(2*backoff, time.Minute)
	}
}

// Stop ends the workers once the queue is answered (with errors: the Set
// is stopped by then) and the sweeper.
func (hf *Handoff) Stop() {
	hf.mu.Lock()
	hf.ended = true
	hf.mu.Unlock()
	close(hf.stop)
	hf.wg.Wait()
}

func (hf *Handoff) sweep(every time.Duration) {
	defer hf.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-hf.stop:
			return
		case <-t.C:
			_ = hf.set.Sweep()
			hf.mu.Lock()
			for id, t := range hf.tokens { // devices dropped while unrestored
				if time.Since(t.at) > every*2 {
					delete(hf.tokens, id)
				}
			}
			hf.mu.Unlock()
		}
	}
}

// ViewChanged is the membership's OnChange: the tombstones of devices
// handed to members that left are void (those devices are loaded anew on
// their next touch, from the members that may hold them, then Redis), and
// the change is logged with how many devices held here now belong to
// others.
func (hf *Handoff) ViewChanged(old, v *cluster.View) {
	if hf.set == nil {
		return
	}
	_, left := v.Diff(old)
	if err := hf.set.Forget(left, nil); err != nil {
		return // stopped
	}
	ids, err := hf.set.HeldIDs()
	if err != nil {
		return
	}
	away := 0
	for _, id := range ids {
		if v.Owner([]byte(id)) != v.Self {
			away++
		}
	}
	hf.log.Info().Uint64("seq", v.Seq).Int("held", len(ids)).Int("owned_elsewhere", away).
		Msg("cluster view changed: devices held here that other members now own are offered to them")
	if away > 0 && v.HasSelf() { // a leaving member offers them itself
		select {
		case hf.rebalance <- struct{}{}:
		default:
		}
	}
}

// Load implements shard.Store: a worker asks the members, then Next.
func (hf *Handoff) Load(id string, done func(*shard.Snapshot, error)) {
	hf.mu.Lock()
	if hf.ended {
		hf.mu.Unlock()
		go done(nil, shard.ErrStopped)
		return
	}
	hf.queue = append(hf.queue, pull{id, done})
	hf.mu.Unlock()
	select {
	case hf.wake <- struct{}{}:
	default:
	}
}

func (hf *Handoff) work() {
	defer hf.wg.Done()
	for {
		hf.mu.Lock()
		var p pull
		ok := len(hf.queue) > 0
		if ok {
			p = hf.queue[0]
			hf.queue[0] = pull{}
			hf.queue = hf.queue[1:]
		}
		more, ended := len(hf.queue) > 0, hf.ended
		hf.mu.Unlock()
		if ok {
			if more {
				select { // pass the wake-up on
				case hf.wake <- struct{}{}:
				default:
				}
			}
			hf.load(p.id, p.done)
			continue
		}
		if ended {
			return
		}
		select {
		case <-hf.wake:
		case <-hf.stop:
		}
	}
}

// errBusy: the member holding a device kept it loading for the whole
// timeout.
var errBusy = errors.New("the member holding the device is still loading it")

// errUnanswered: a member was asked and did not answer in time; it may
// have handed the device over (and keeps the state for a retry).
var errUnanswered = errors.New("the member asked did not answer; it may have handed the device over")

// load finds id's state and answers done once.
func (hf *Handoff) load(id string, done func(*shard.Snapshot, error)) {
	start := time.Now()
	defer hf.duration.UpdateDuration(start)
	view := hf.members.View()
	var asked []string
	hf.mu.Lock()
	hint, hinted := hf.hints[id]
	if hinted {
		asked = append(asked, hint) // it offered the device: ask it first
		delete(hf.hints, id)
	}
	token := hf.tokens[id].token
	if token == 0 {
		token = rand.Uint64() | 1 // nonzero: zero is no token
	}
	hf.mu.Unlock()
	asked = view.Sources([]byte(id), hf.members.Listed(), asked)
	if len(asked) > maxAsked {
		asked = asked[:maxAsked]
	}
	seen := slices.Clone(asked)
	// All at once: one holds the state at most (the others answer 204),
	// so a new device costs one round trip, not one per member.
	var stuck string // a member busy, or silent, to the end
	var stuckErr error
	for len(asked) > 0 {
		answers := make([]answer, len(asked))
		errs := make([]error, len(asked))
		var wg sync.WaitGroup
		for i, m := range asked {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i], errs[i] = hf.ask(m, view.Self, id, token, time.Now().Add(2*hf.timeout))
			}()
		}
		wg.Wait()
		var next []string
		for i, m := range asked {
			a, err := answers[i], errs[i]
			switch {
			case err == nil && a.snap != nil:
				hf.fromPeer.Inc()
				hf.settled(id, hinted && m == hint)
				a.snap.Unsaved = true // not in Redis: the next snapshot writes it
				done(a.snap, nil)
				return
			case errors.Is(err, errHolderUnrestored) && view.Owner([]byte(id)) != view.Self:
				// Its copy lacks the stored state and this member does not
				// own the device (it reconciles a copy of its own): the
				// store has what it needs. The owner instead waits for the
				// holder, which reconciles through the store this way, and
				// then hands over everything, its samples from the outage
				// too.
			case errors.Is(err, errBusy), errors.Is(err, errUnanswered), errors.Is(err, errHolderUnrestored):
				stuck, stuckErr = m, err
			case err != nil:
				hf.unreachable.Inc()
				// One line in 10 s: a crashed member fails an ask for every
				// device it may have held.
				if now, last := time.Now().UnixNano(), hf.warnedAt.Load(); now-last > int64(10*time.Second) && hf.warnedAt.CompareAndSwap(last, now) {
					hf.log.Warn().Err(err).Str("device", id).Str("member", m).Msg("handoff: cannot reach a member that may hold a device (handoff_asks_unreachable_total counts them)")
				}
			case a.movedTo != "" && a.movedTo != view.Self && !contains(seen, a.movedTo) && len(seen) < 2*maxAsked:
				next = append(next, a.movedTo) // it was handed on: follow it
				seen = append(seen, a.movedTo)
			}
		}
		asked = next
	}
	hf.settled(id, false)
	if stuck != "" {
		hf.busy.Inc()
		err := fmt.Errorf("cannot take device %q over from member %s: %w", id, stuck, stuckErr)
		if hf.next == nil {
			// Nobody would retry an unrestored device: serve it fresh.
			hf.log.Warn().Err(err).Msg("handoff: starting the device fresh")
			done(nil, nil)
			return
		}
		// Unrestored: the persister's retries ask again, with this token
		// (a member that handed the state over serves it again only to
		// the same load).
		hf.mu.Lock()
		hf.tokens[id] = tokenAt{token, time.Now()}
		hf.mu.Unlock()
		done(nil, err)
		return
	}
	if hf.next == nil {
		hf.none.Inc()
		done(nil, nil)
		return
	}
	hf.fromNext.Inc()
	hf.next.Load(id, done)
}

// offerBudget bounds one round of offers after a change of view.
const offerBudget = time.Minute

// tokenAt is a load's token kept for the next load, and when.
type tokenAt struct {
	token uint64
	at    time.Time
}

// settled forgets id's token and records, for a claim, whether the member
// that offered it handed it over.
func (hf *Handoff) settled(id string, fromHint bool) {
	hf.mu.Lock()
	defer hf.mu.Unlock()
	delete(hf.tokens, id)
	if _, claimed := hf.claims[id]; claimed {
		hf.claims[id] = fromHint
	}
}

// maxAsked bounds the members asked for one device, following handoffs.
const maxAsked = 8

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// hdrToken carries a taker's load token (see shard.Set.HandOff).
const hdrToken = "X-Aiload-Token"

// answer is what a member answered a handoff ask.
type answer struct {
	snap    *shard.Snapshot
	movedTo string // it handed the device to this member
}

// errHolderUnrestored: the member holding the device runs it unrestored.
var errHolderUnrestored = errors.New("the member holding the device has not loaded its stored state")

// hdrUnrestored marks a 409 for a device held unrestored.
const hdrUnrestored = "X-Aiload-Unrestored"

// ask asks member m to hand id over to self, again while it answers busy,
// or does not answer (it may have handed the state over: asked again with
// the same token, it hands the same state), until deadline. It returns the
// answer; errBusy or errUnanswered at the deadline, another error when m
// cannot be reached at all.
func (hf *Handoff) ask(m, self, id string, token uint64, deadline time.Time) (answer, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	for {
		req.SetRequestURI("http://" + m + handoffPath)
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.Set(hdrForwarded, self)
		hf.creds.sign(req, nil)
		req.Header.Set(hdrToken, strconv.FormatUint(token, 10))
		req.SetBodyString(id)
		try := time.Now().Add(hf.timeout)
		if try.After(deadline) {
			try = deadline
		}
		err := hf.client.DoDeadline(req, resp, try)
		retry := errUnanswered
		switch {
		case err != nil && notApplied(err) && !isOp(err, "write"):
			if errors.Is(err, syscall.ECONNREFUSED) {
				hf.members.Suspect(m, time.Now().Add(suspectFor))
			}
			return answer{}, err // never reached it: nothing was handed
		case err != nil:
		case resp.StatusCode() == fasthttp.StatusOK:
			snap, err := shard.DecodeSnapshot(resp.Body())
			if err == nil && snap.Device != id {
				err = fmt.Errorf("snapshot of %q", snap.Device)
			}
			if err != nil {
				return answer{}, fmt.Errorf("member %s handed over a bad snapshot: %w", m, err)
			}
			return answer{snap: snap}, nil
		case resp.StatusCode() == fasthttp.StatusNoContent:
			return answer{movedTo: string(resp.Header.Peek(hdrMovedTo))}, nil
		case resp.StatusCode() == fasthttp.StatusConflict && len(resp.Header.Peek(hdrUnrestored)) > 0:
			return answer{}, errHolderUnrestored // it reconciles on its own time: ask again on a retry
		case resp.StatusCode() == fasthttp.StatusConflict:
			retry = errBusy
		default:
			return answer{}, fmt.Errorf("member %s answered %d: %s", m, resp.StatusCode(), clip(resp.Body()))
		}
		if time.Now().After(deadline) {
			return answer{}, retry
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handoff serves handoffPath: hands a device this pod holds to the member
// asking, which owns it now.
func (h *Handler) handoff(ctx *fasthttp.RequestCtx) error {
	to := string(ctx.Request.Header.Peek(hdrForwarded))
	if h.fwd == nil || to == "" {
		return errorf(fasthttp.StatusBadRequest, "%s is for cluster members taking a device over", handoffPath)
	}
	if host, port, err := net.SplitHostPort(to); err != nil || host == "" || port == "" || to == h.fwd.members.View().Self {
		return badRequest("%s %q must be the host:port of the member taking the device, not this one", hdrForwarded, clip([]byte(to)))
	}
	token, err := strconv.ParseUint(string(ctx.Request.Header.Peek(hdrToken)), 10, 64)
	if err != nil {
		return badRequest("%s must be the taker's load token, an unsigned integer", hdrToken)
	}
	id := ctx.PostBody()
	if !deviceChars.valid(id, maxDeviceLen) {
		return badRequest("device ID must be 1-%d characters from A-Z a-z 0-9 . _ : -", maxDeviceLen)
	}
	h.fwd.heard(ctx)
	got, err := h.set.HandOff(string(id), to, token)
	if err != nil {
		return err
	}
	switch {
	case got.State != nil:
		if !got.Again {
			h.handedOut.Inc()
		}
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(got.State)
	case got.Busy && got.Unrestored:
		ctx.Response.Header.Set(hdrUnrestored, "1")
		return errorf(fasthttp.StatusConflict, "device %q runs here without its stored state (Redis failed it); load it from Redis", id)
	case got.Busy:
		return errorf(fasthttp.StatusConflict, "device %q is loading here; ask again shortly", id)
	default:
		if got.MovedTo != "" {
			ctx.Response.Header.Set(hdrMovedTo, got.MovedTo)
		}
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	}
	return nil
}

// claimPath is the route a stopping member offers its devices on: POST
// their IDs, one a line, with its address in hdrForwarded. The receiver,
// which owns them now, takes each over (asking the sender first) before
// it answers, so a stopping member's devices move even if no sample of
// theirs arrives while it drains.
const claimPath = "/internal/v1/claim"

// claimChunk is how many devices one claim request offers.
const claimChunk = 1000

// claim serves claimPath.
func (h *Handler) claim(ctx *fasthttp.RequestCtx) error {
	from := string(ctx.Request.Header.Peek(hdrForwarded))
	if h.fwd == nil || h.opts.Handoff == nil || from == "" {
		return errorf(fasthttp.StatusBadRequest, "%s is for cluster members handing devices over", claimPath)
	}
	var ids []string
	for _, line := range bytes.Split(ctx.PostBody(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !deviceChars.valid(line, maxDeviceLen) {
			return badRequest("device ID %q must be 1-%d characters from A-Z a-z 0-9 . _ : -", clip(line), maxDeviceLen)
		}
		ids = append(ids, string(line))
	}
	if len(ids) == 0 || len(ids) > claimChunk {
		return badRequest("a claim offers 1 to %d devices, one ID a line", claimChunk)
	}
	if !h.fwd.members.View().HasSelf() {
		// Leaving too: what it took now, it would hold past its own
		// handover.
		return errorf(fasthttp.StatusServiceUnavailable, "this member is leaving too; offer the devices to another")
	}
	h.fwd.heard(ctx)
	hf := h.opts.Handoff
	// Devices this pod handed to the sender before come back: their
	// tombstones here must not send them on to it again.
	if err := h.set.Forget([]string{from}, ids); err != nil {
		return err
	}
	hf.mu.Lock()
	for _, id := range ids {
		hf.hints[id] = from
		hf.claims[id] = false
	}
	hf.mu.Unlock()
	// A read loads a device it does not hold (through hf, which asks the
	// sender first) and waits for the load; the answer itself is unused.
	var wg sync.WaitGroup
	work := make(chan string)
	for range min(len(ids), handoffWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				_, _, _ = h.set.Device(id)
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	failed := 0
	hf.mu.Lock()
	for _, id := range ids {
		// A device held here already was not loaded: nothing to take.
		// One loaded but not from the sender was not taken over: it
		// stays with the sender (the read that loaded it left no copy).
		if took, loaded := hf.claims[id]; loaded && !took {
			if _, stillHinted := hf.hints[id]; !stillHinted {
				failed++
			}
		}
		delete(hf.claims, id)
		delete(hf.hints, id)
	}
	hf.mu.Unlock()
	b := []byte(`{"offered":`)
	b = strconv.AppendInt(b, int64(len(ids)), 10)
	b = append(b, `,"failed":`...)
	b = strconv.AppendInt(b, int64(failed), 10)
	b = append(b, "}\n"...)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
	return nil
}

// HandOver offers every device this pod holds to its owner by the current
// view (call it after Leave, while the server still serves: the owners
// take the devices through handoffPath), until none is left or ctx ends.
// A member that refuses (it is leaving too) is left out and its devices
// offered to the next owner. It returns how many devices were offered and
// the errors of the offers that failed; the devices of those stay here,
// for the final snapshot.
func (h *Handler) HandOver(ctx context.Context) (int, error) {
	if h.fwd == nil {
		return 0, nil
	}
	offered := 0
	var out []string // members that refused
	var errs []error
	for round := 0; round < 3 && ctx.Err() == nil; round++ {
		ids, err := h.set.HeldIDs()
		if err != nil {
			return offered, err
		}
		view := h.fwd.members.View()
		if len(out) > 0 {
			view = cluster.NewView(view.Self, slices.DeleteFunc(slices.Clone(view.Members), func(m string) bool { return slices.Contains(out, m) }))
		}
		byOwner := map[string][]string{}
		for _, id := range ids {
			if o := view.Owner([]byte(id)); o != "" && o != view.Self {
				byOwner[o] = append(byOwner[o], id)
			}
		}
		if len(byOwner) == 0 {
			break
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		errs = errs[:0]
		for owner, list := range byOwner {
			offered += len(list)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for len(list) > 0 {
					n := min(len(list), claimChunk)
					failed, err := h.offer(ctx, owner, view.Self, list[:n])
					if err == nil && failed > 0 {
						err = fmt.Errorf("%d devices not taken", failed)
					}
					if err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("offering %d devices to %s: %w", len(list), owner, err))
						if errors.Is(err, errLeaving) || notApplied(err) && !isOp(err, "write") {
							out = append(out, owner) // leaving, or down: the next owner takes them
						}
						mu.Unlock()
						return
					}
					list = list[n:]
				}
			}()
		}
		wg.Wait()
	}
	return offered, errors.Join(errs...)
}

// errLeaving: the member offered devices is leaving too.
var errLeaving = errors.New("it is leaving too")

// offer sends one claim to owner and waits for its answer: how many of ids
// it could not take.
func (h *Handler) offer(ctx context.Context, owner, self string, ids []string) (int, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + owner + claimPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.Set(hdrForwarded, self)
	h.fwd.creds.sign(req, nil)
	req.SetBodyString(strings.Join(ids, "\n"))
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	if err := h.fwd.client.DoDeadline(req, resp, deadline); err != nil {
		return 0, err
	}
	switch resp.StatusCode() {
	case fasthttp.StatusOK:
	case fasthttp.StatusServiceUnavailable:
		return 0, fmt.Errorf("%w: %s", errLeaving, clip(resp.Body()))
	default:
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode(), clip(resp.Body()))
	}
	var r struct{ Failed int }
	if err := json.Unmarshal(resp.Body(), &r); err != nil {
		return 0, fmt.Errorf("unreadable answer %q: %w", clip(resp.Body()), err)
	}
	return r.Failed, nil
}
