// Package server is the HTTP front end: routes, decoding, validation and
// responses. Device state lives in package shard; handlers reach it only
// through shard.Set, after copying what they need out of the request.
package server

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fasthttp/router"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/pprofhandler"
)

// Options configure a Handler. A zero field means the default in its comment.
type Options struct {
	Shards       *shard.Set     // required
	MaxBodyBytes int            // for the 413 message; the fasthttp.Server enforces it; zero: 1 MiB
	Log          zerolog.Logger // zero: logs nothing
	// Metrics are more sets to expose on /metrics, such as the persister's.
	Metrics []*metrics.Set
	// Pprof serves Go's profiler under /debug/pprof/ when true; off by
	// default since profiles expose internals.
	Pprof bool
	// Timeouts bound the connections of the Listener from Listen, and name
	// the read bound in the 408 message.
	Timeouts Timeouts
	// MaxMetricLabels bounds the metric label values of
	// rolling_average_current; further names share metric="(other)". Zero: 100.
	MaxMetricLabels int
	// Cluster is the membership this pod forwards by: samples and reads of
	// devices another member owns go to it (see forward.go), and /ready
	// waits for a view that includes this pod. Nil: a cluster of one.
	Cluster *cluster.Membership
	// ForwardTimeout bounds one forwarded request; zero: 2s.
	ForwardTimeout time.Duration
	// Handoff is the Set's Store in cluster mode, which claims (offers of
	// a stopping member's devices) hint at.
	Handoff *Handoff
	// Credentials are the tokens routes need (see Credentials); nil: every
	// route is open.
	Credentials *Credentials
	// MaxBatch bounds the samples of one ingest request (413 beyond);
	// zero: DefaultMaxBatch.
	MaxBatch int
	// MaxConnsPerIP bounds the open connections from one client address
	// on h.Listen's Listener (429 and close beyond); zero: no bound.
	MaxConnsPerIP int
}

// DefaultMaxBatch is Options.MaxBatch's default.
const DefaultMaxBatch = 10000

// Handler serves the API. Create it with New.
type Handler struct {
	set    *shard.Set
	opts   Options
	log    zerolog.Logger
	ms     *metrics.Set
	router *router.Router

	state atomic.Int32 // stateStarting, stateReady or stateDraining

	samples   *metrics.Counter
	anomalies *metrics.Counter // alerts
	anomalous *metrics.Counter // anomalous samples, alerted or not
	other     *endpoint        // requests that match no route
	fwd       *forwarder       // nil: a cluster of one
	handedOut *metrics.Counter // devices handed over to other members
	// byPath holds the routes without parameters, by path, for requests
	// answered before routing (ErrorHandler, Expect). Filled by routes,
	// read-only after New.
	byPath map[string]*endpoint

	pool sync.Pool // *ingestState
}

const (
	stateStarting int32 = iota
	stateReady
	stateDraining
)

// ingestState is the per-request scratch of the ingest routes, pooled.
type ingestState struct {
	scanner scanner
	batch   shard.Batch
	part    shard.Batch // cluster mode: the samples this pod owns
	out     []byte
}

// New returns a Handler that is not ready yet: /ready answers 503 until
// SetReady.
func New(opts Options) *Handler {
	if opts.Shards == nil {
		panic("BUG: server.New needs Options.Shards")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.MaxMetricLabels <= 0 {
		opts.MaxMetricLabels = 100
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	// /metrics carries HELP and TYPE lines, so Prometheus knows each
	// family's type. The switch is global in package metrics; every writer
	// in this process wants it on.
	metrics.ExposeMetadata(true)
	h := &Handler{set: opts.Shards, opts: opts, log: opts.Log, ms: metrics.NewSet(), byPath: map[string]*endpoint{}}
	h.pool.New = func() any { return new(ingestState) }
	h.samples = h.ms.NewCounter("samples_ingested_total")
	h.anomalies = h.ms.NewCounter("anomaly_detection_total")
	h.anomalous = h.ms.NewCounter("anomalous_samples_total")
	h.ms.NewGauge("active_devices", func() float64 { return float64(h.set.Devices()) })
	h.ms.NewGauge("active_streams", func() float64 { return float64(h.set.Streams()) })
	h.ms.NewGauge("shards", func() float64 { return float64(h.set.Len()) })
	h.ms.NewGauge("devices_unrestored", func() float64 { return float64(h.set.Unrestored()) })
	for i := range h.set.Len() {
		h.ms.NewGauge(fmt.Sprintf(`shard_queue_depth{shard="%d"}`, i), func() float64 { return float64(h.set.QueueDepth(i)) })
	}
	h.ms.NewGauge("ready", func() float64 {
		if h.state.Load() == stateReady {
			return 1
		}
		return 0
	})
	if opts.Handoff != nil {
		opts.Handoff.offer = h.HandOver
	}
	if opts.Cluster != nil {
		h.fwd = newForwarder(opts.Cluster, opts.ForwardTimeout, opts.Timeouts.Idle, h.ms)
		h.fwd.creds = opts.Credentials
		h.handedOut = h.ms.NewCounter("handoffs_out_total")
		h.ms.NewGauge("devices_handed_off", func() float64 { return float64(h.set.Tombstones()) })
	}
	h.router = h.routes()
	return h
}

// routes declares every path the service serves.
func (h *Handler) routes() *router.Router {
	r := router.New()
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	// The router's own OPTIONS answers (an empty 200 with "Allow: *,
	// OPTIONS" for OPTIONS *) bypass the endpoints: no JSON, no count.
	// OPTIONS goes to the routes like any method, and gets their 405.
	r.HandleOPTIONS = false
	r.HandleMethodNotAllowed = false // every route takes ANY and answers its own 405
	add := func(path string, methods string, a access, fn func(*fasthttp.RequestCtx) error) {
		e := h.newEndpoint(path, strings.Split(methods, ","), fn)
		e.access = a
		e.trustMark = path != "/metric" // its handler ignores a client's marker
		if !strings.Contains(path, "{") {
			h.byPath[path] = e
		}
		r.ANY(path, e.serve)
	}
	add("/", "GET", accessOpen, h.index)
	add("/health", "GET", accessOpen, h.health)
	add("/ready", "GET", accessOpen, h.ready)
	add("/metrics", "GET", accessMetrics, h.metrics)
	add("/analyze", "GET", accessIngest, h.analyze)
	add("/metric", "POST", accessIngest, h.metric)
	add("/api/v1/ingest", "POST", accessIngest, h.ingest)
	add("/api/v1/devices/{device}", "GET", accessIngest, h.device)
	add("/api/v1/devices/{device}/anomalies", "GET", accessIngest, h.deviceAnomalies)
	add("/api/v1/cluster", "GET", accessIngest, h.clusterInfo)
	add(handoffPath, "POST", accessCluster, h.handoff)
	add(claimPath, "POST", accessCluster, h.claim)
	if h.opts.Pprof {
		add("/debug/pprof/{profile:*}", "GET", accessMetrics, h.pprof)
	}
	h.other = h.newEndpoint("other", nil, func(ctx *fasthttp.RequestCtx) error {
		// The path as sent: routes match it, not fasthttp's normalised
		// Path (which turns /api/v1//devices/d1 into a route that exists).
		return errorf(fasthttp.StatusNotFound, "no route for %s %q; GET / lists the routes", ctx.Method(), clip(ctx.Request.URI().PathOriginal()))
	})
	r.NotFound = h.other.serve
	return r
}

// pprof serves Go's profiles, except the command line: it echoes os.Args,
// which may hold -redis-password. The handler picks its page from the
// cleaned, decoded path (/debug/pprof//cmdline and /%63mdline are
// cmdline too), so that is the path checked.
func (h *Handler) pprof(ctx *fasthttp.RequestCtx) error {
	if p := ctx.Path(); bytes.HasPrefix(p, []byte("/debug/pprof/cmdline")) {
		return errorf(fasthttp.StatusNotFound, "the command line is not served: it may hold secrets")
	}
	pprofhandler.PprofHandler(ctx)
	return nil
}

// Handler returns the fasthttp handler for every route.
func (h *Handler) Handler() fasthttp.RequestHandler { return h.serve }

// NewServer returns the fasthttp.Server that serves h: every hook it needs
// wired (handler, error and Expect handlers, the connection-state hook the
// Listener's read bound relies on, the logger) and the body limit. Serve it
// on h.Listen's Listener. No ReadTimeout, WriteTimeout or IdleTimeout: the
// Listener enforces them without a timer update per request.
func (h *Handler) NewServer() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            h.serve,
		ErrorHandler:       h.ErrorHandler,
		ExpectHandler:      h.Expect,
		ConnState:          h.connState,
		Logger:             h,
		Name:               "ai-load-service",
		MaxRequestBodySize: h.opts.MaxBodyBytes,
		CloseOnShutdown:    true,
		NoDefaultDate:      true,
	}
}

// connState moves a Listener's connection into its read phase when
// fasthttp starts on a request: also one whose bytes were already read
// with the request before it (pipelined), which no Read announces.
func (h *Handler) connState(c net.Conn, st fasthttp.ConnState) {
	if st == fasthttp.StateActive {
		if cc, ok := c.(*conn); ok {
			cc.active()
		}
	}
}

func (h *Handler) serve(ctx *fasthttp.RequestCtx) {
	// The request is read: on a Listener's connection the read bound stops
	// here and does not run on through the handler.
	if c, ok := ctx.Conn().(*conn); ok {
		c.handling()
	}
	h.router.Handler(ctx)
}

// Listen wraps ln so its connections are held to Options.Timeouts, counted
// on /metrics. Stop the Listener after the server stops.
func (h *Handler) Listen(ln net.Listener) *Listener {
	l := NewListener(ln, h.opts.Timeouts, h.ms)
	l.SetMaxConnsPerIP(h.opts.MaxConnsPerIP)
	if m := h.opts.Cluster; m != nil {
		// A member forwards all its clients' requests from its own
		// address, over a pool of up to 512 connections: the bound is
		// for clients, not for members.
		l.SetExempt(m.IsMember)
	}
	return l
}

// SetReady marks the service ready for traffic (/ready 200).
func (h *Handler) SetReady() { h.state.Store(stateReady) }

// SetDraining marks the service as shutting down (/ready 503).
func (h *Handler) SetDraining() { h.state.Store(stateDraining) }

// ErrorHandler answers requests fasthttp rejects before routing, such as
// bodies over the limit, in the API's JSON error format. Set it as
// fasthttp.Server.ErrorHandler.
func (h *Handler) ErrorHandler(ctx *fasthttp.RequestCtx, err error) {
	start := time.Now()
	h.writeError(ctx, h.readError(err))
	h.route(ctx).record(ctx, start)
}

// Expect answers a request with Expect: 100-continue from its headers: a
// declared body over MaxBodyBytes gets the 413 JSON error at once, instead
// of a 100 Continue inviting the body and the 413 after it. Set it as
// fasthttp.Server.ExpectHandler.
//
// fasthttp writes ctx.Response as it stands with the status returned and
// closes the connection (the client may be sending the body already). Its
// documentation asks that the response not be modified here; writing the
// error body is the one way to send JSON rather than an empty 413, and
// TestExpectContinueTooLarge checks that fasthttp still sends it.
func (h *Handler) Expect(ctx *fasthttp.RequestCtx) int {
	if n := ctx.Request.Header.ContentLength(); n <= h.opts.MaxBodyBytes {
		return fasthttp.StatusContinue // also -1, chunked: fasthttp enforces the limit as it reads
	}
	start := time.Now()
	h.writeError(ctx, bodyTooLarge(h.opts.MaxBodyBytes))
	h.route(ctx).record(ctx, start)
	return ctx.Response.StatusCode()
}

// route returns the endpoint of the route whose path (undecoded, as the
// router matches it) is exactly the request's, or h.other: parameterised
// routes and unmatched paths are counted as other. fasthttp resets the
// request when it cannot read its header or body, so a request cut off
// then, or with a malformed header or chunked body, has no path left and is
// counted as other too.
func (h *Handler) route(ctx *fasthttp.RequestCtx) *endpoint {
	if len(ctx.Request.Header.RawHeaders()) == 0 {
		// Never parsed, or reset (fasthttp resets a request whose body
		// fails): the "/" it reports is a default. The connection kept the
		// request's first bytes; the method label comes from them too.
		if c, ok := ctx.Conn().(*conn); ok {
			if method, path := c.requestLine(); path != nil {
				ctx.Request.Header.SetMethodBytes(method)
				if e, ok := h.byPath[string(path)]; ok {
					return e
				}
			}
		}
		return h.other
	}
	if e, ok := h.byPath[string(ctx.Request.URI().PathOriginal())]; ok {
		return e
	}
	return h.other
}

// Printf lets the Handler serve as fasthttp.Server.Logger: fasthttp's
// connection errors (client resets, oversized bodies) go to the log at
// debug level, since they are per-request events already counted.
func (h *Handler) Printf(format string, args ...any) {
	h.log.Debug().Msgf(format, args...)
}

// endpoint is one route's method check, metrics and error mapping.
type endpoint struct {
	h       *Handler
	name    string
	methods []string
	allow   string
	fn      func(*fasthttp.RequestCtx) error
	access  access // the credential it needs
	// trustMark: a request marked as forwarded is a member's, held to
	// CLUSTER_TOKEN (false where the handler ignores the marker).
	trustMark bool
	duration  *metrics.PrometheusHistogram
	// counts[method][status-100] caches requests_total counters, created on
	// first use so that only statuses that happen become series.
	counts [len(methodNames)][500]atomic.Pointer[metrics.Counter]
}

var methodNames = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}

// durationBuckets spans 50µs to 10s: the service answers in microseconds.
var durationBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

func (h *Handler) newEndpoint(name string, methods []string, fn func(*fasthttp.RequestCtx) error) *endpoint {
	e := &endpoint{h: h, name: name, methods: methods, fn: fn}
	if len(methods) > 0 && methods[0] == "GET" {
		e.methods = append(e.methods, "HEAD")
	}
	e.allow = strings.Join(e.methods, ", ")
	e.duration = h.ms.NewPrometheusHistogramExt(fmt.Sprintf(`request_duration_seconds{route=%q}`, name), durationBuckets)
	return e
}

func (e *endpoint) serve(ctx *fasthttp.RequestCtx) {
	start := ctx.Time() // fasthttp reads the clock once per request already
	var err error
	var denied *Error
	if c := e.h.opts.Credentials; c != nil { // no header lookup on the hot path without credentials
		denied = c.authorize(ctx, e.access, e.trustMark && len(ctx.Request.Header.Peek(hdrForwarded)) > 0)
	}
	if denied != nil {
		e.h.authFailed(e.name)
		err = denied
	} else if e.allowed(ctx.Method()) {
		err = e.fn(ctx)
	} else {
		ctx.Response.Header.Set("Allow", e.allow)
		err = errorf(fasthttp.StatusMethodNotAllowed, "method %s not allowed on %s; use %s", clip(ctx.Method()), e.name, e.allow)
	}
	if err != nil {
		e.h.writeError(ctx, err)
	}
	e.record(ctx, start)
}

func (e *endpoint) allowed(m []byte) bool {
	if e.methods == nil {
		return true
	}
	for _, a := range e.methods {
		if string(m) == a {
			return true
		}
	}
	return false
}

func (e *endpoint) record(ctx *fasthttp.RequestCtx, start time.Time) {
	e.duration.UpdateDuration(start)
	mi := len(methodNames) - 1
	for i, m := range methodNames[:mi] {
		if string(ctx.Method()) == m {
			mi = i
			break
		}
	}
	code := ctx.Response.StatusCode()
	if code < 100 || code > 599 {
		code = 599
	}
	p := &e.counts[mi][code-100]
	c := p.Load()
	if c == nil {
		c = e.h.ms.GetOrCreateCounter(fmt.Sprintf(`requests_total{route=%q,method=%q,status="%d"}`, e.name, methodNames[mi], code))
		p.Store(c)
	}
	c.Inc()
}
