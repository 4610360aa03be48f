package server

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// Credentials are the bearer tokens the service checks. The zero value
// checks nothing: every route is open, as without settings.
//
//   - Ingest tokens (INGEST_TOKENS, or INGEST_TOKENS_FILE re-read when it
//     changes) guard the ingest routes, /metric and the reads.
//   - The metrics token (METRICS_TOKEN) guards /metrics and pprof.
//   - The cluster token (CLUSTER_TOKEN) guards what members send each
//     other: every request marked as forwarded, and the handoff routes.
//     Without it a forwarded request carries its client's Authorization,
//     which the owner checks as it would the client's own request, and
//     the handoff routes are open only while the ingest routes are (they
//     hand out device state; main refuses cluster mode with ingest tokens
//     and no cluster token).
//
// Tokens are compared in constant time, and never logged or counted.
type Credentials struct {
	ingest      atomic.Pointer[[][]byte] // nil: no ingest tokens
	metrics     []byte
	cluster     []byte
	clusterAuth []byte // "Bearer " + cluster, the header members send

	file     string
	interval time.Duration
	log      zerolog.Logger
	stat     [sha256.Size]byte // of the file's last content taken; owned by the watcher
	read     bool              // stat is set
	stop     chan struct{}
	done     chan struct{}
}

// CredentialOptions configure NewCredentials.
type CredentialOptions struct {
	IngestTokens     string // comma-separated
	IngestTokensFile string // one a line; "#" starts a comment
	MetricsToken     string
	ClusterToken     string
	// Reload is how often IngestTokensFile is checked for a change; zero:
	// 5 s. A mounted Kubernetes Secret changes within about a minute.
	Reload time.Duration
	Log    zerolog.Logger
}

// MinTokenLen is the shortest token accepted: shorter ones are guessable.
const MinTokenLen = 16

// NewCredentials checks the tokens and reads the file. With a file it
// starts a watcher: Stop it.
func NewCredentials(o CredentialOptions) (*Credentials, error) {
	c := &Credentials{file: o.IngestTokensFile, interval: o.Reload, log: o.Log}
	if o.IngestTokens != "" && o.IngestTokensFile != "" {
		return nil, errors.New("INGEST_TOKENS and INGEST_TOKENS_FILE are both set; use one")
	}
	if o.IngestTokens != "" {
		toks, err := parseTokens(strings.Split(o.IngestTokens, ","), "INGEST_TOKENS")
		if err != nil {
			return nil, err
		}
		c.ingest.Store(&toks)
	}
	for _, t := range []struct {
		name, v string
		dst     *[]byte
	}{{"METRICS_TOKEN", o.MetricsToken, &c.metrics}, {"CLUSTER_TOKEN", o.ClusterToken, &c.cluster}} {
		if t.v == "" {
			continue
		}
		toks, err := parseTokens([]string{t.v}, t.name)
		if err != nil {
			return nil, err
		}
		*t.dst = toks[0]
	}
	if c.cluster != nil {
		c.clusterAuth = append([]byte("Bearer "), c.cluster...)
	}
	if c.file == "" {
		return c, nil
	}
	if c.interval <= 0 {
		c.interval = 5 * time.Second
	}
	if err := c.reload(); err != nil {
		return nil, err
	}
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	go c.watch()
	return c, nil
}

// Stop ends the file watcher, if any.
func (c *Credentials) Stop() {
	if c == nil || c.stop == nil {
		return
	}
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

func (c *Credentials) watch() {
	defer close(c.done)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			if err := c.reload(); err != nil {
				// The tokens in force stay: a half-written or emptied
				// file must not lock every device out.
				c.log.Error().Err(err).Msg("ingest tokens not reloaded; the previous ones stay in force")
			}
		}
	}
}

// reload reads the file if it changed.
func (c *Credentials) reload() error {
	// The content decides, not the file's time or size: a rotation to a
	// token of the same length within one mtime tick (or by a tool that
	// keeps times) must still take effect. The file is small.
	data, err := os.ReadFile(c.file)
	if err != nil {
		return fmt.Errorf("INGEST_TOKENS_FILE: %w", err)
	}
	st := sha256.Sum256(data)
	if c.read && st == c.stat {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return fmt.Errorf("INGEST_TOKENS_FILE %s holds no tokens", c.file)
	}
	toks, err := parseTokens(lines, "INGEST_TOKENS_FILE "+c.file)
	if err != nil {
		return err
	}
	c.ingest.Store(&toks)
	if c.read {
		c.log.Info().Int("tokens", len(toks)).Msg("ingest tokens reloaded")
	}
	c.stat, c.read = st, true
	return nil
}

// parseTokens checks each token: RFC 6750's token68 characters, at least
// MinTokenLen of them. Errors say where, never what.
func parseTokens(vs []string, where string) ([][]byte, error) {
	out := make([][]byte, 0, len(vs))
	for i, v := range vs {
		v = strings.TrimSpace(v)
		if len(v) < MinTokenLen {
			return nil, fmt.Errorf("%s: token %d is %d characters; want at least %d", where, i+1, len(v), MinTokenLen)
		}
		for _, r := range v {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~+/=", r)) {
				return nil, fmt.Errorf("%s: token %d has a character outside A-Z a-z 0-9 - . _ ~ + / =", where, i+1)
			}
		}
		out = append(out, []byte(v))
	}
	return out, nil
}

// access is what a route needs.
type access uint8

const (
	accessOpen    access = iota // /health, /ready, /
	accessIngest                // ingest, /metric, reads
	accessMetrics               // /metrics, pprof
	accessCluster               // the handoff routes
)

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(h *fasthttp.RequestHeader) []byte {
	v := h.Peek(fasthttp.HeaderAuthorization)
	if len(v) < 7 || !bytes.EqualFold(v[:7], []byte("bearer ")) {
		return nil
	}
	return bytes.TrimSpace(v[7:])
}

// matches compares tok with every candidate in constant time.
func matches(tok []byte, cands ...[]byte) bool {
	ok := 0
	for _, c := range cands {
		ok |= subtle.ConstantTimeCompare(tok, c)
	}
	return ok == 1 && len(tok) > 0
}

// errUnauthorized is the 401 of a request without the credential its
// route needs; which setting says in the message.
func errUnauthorized(setting string) *Error {
	e := errorf(fasthttp.StatusUnauthorized, "missing or invalid bearer token: send Authorization: Bearer <token>, one of %s", setting)
	e.Reason = "unauthorized"
	return e
}

// authorize checks ctx's credential for a route needing a. marked says
// the request claims to come from another member.
func (c *Credentials) authorize(ctx *fasthttp.RequestCtx, a access, marked bool) *Error {
	if c == nil {
		return nil
	}
	h := &ctx.Request.Header
	if (marked || a == accessCluster) && c.cluster != nil {
		if !matches(bearer(h), c.cluster) {
			return errUnauthorized("CLUSTER_TOKEN (this request is marked as sent by a cluster member)")
		}
		return nil
	}
	switch a {
	case accessCluster:
		// Without a cluster token the handoff routes are open only where
		// everything is: they hand a device's state to whoever asks.
		if c.ingest.Load() != nil {
			return errUnauthorized("CLUSTER_TOKEN (set it wherever INGEST_TOKENS is, in cluster mode)")
		}
	case accessIngest:
		if p := c.ingest.Load(); p != nil && !matches(bearer(h), *p...) {
			return errUnauthorized("INGEST_TOKENS")
		}
	case accessMetrics:
		if c.metrics != nil && !matches(bearer(h), c.metrics) {
			return errUnauthorized("METRICS_TOKEN")
		}
	}
	return nil
}

// sign sets the credential of a request to another member: the cluster
// token, or else the client's own Authorization header value (auth), if
// any.
func (c *Credentials) sign(req *fasthttp.Request, auth []byte) {
	switch {
	case c != nil && c.cluster != nil:
		req.Header.SetBytesV(fasthttp.HeaderAuthorization, c.clusterAuth)
	case len(auth) > 0:
		req.Header.SetBytesV(fasthttp.HeaderAuthorization, auth)
	}
}
