// Command ai-load-service ingests IoT device metrics over HTTP, keeps a
// rolling window per device and metric, and flags anomalies as samples
// arrive. main.go is wiring only: configuration, logger, start, stop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ai-load-service/persist"
	"ai-load-service/server"
	"ai-load-service/server/cluster"
	"ai-load-service/shard"
	"ai-load-service/shard/detect"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
)

// config is every setting; each has an environment variable and a flag, and
// the flag wins.
type config struct {
	Addr         string
	WindowSize   int
	MinSamples   int
	ZThreshold   float64
	MinStddev    float64
	Shards       int
	QueueLen     int
	MaxStreams   int
	HistoryLen   int
	MaxBodyBytes int
	LogLevel     string
	DrainDelay   time.Duration
	StopTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	IdleTimeout  time.Duration
	Pprof        bool
	Detector     string
	Cooldown     int
	CooldownTime time.Duration // ALERT_COOLDOWN given as a duration; Cooldown is then 0
	StepFloor    float64
	RulesFile    string

	IngestTokens     string
	IngestTokensFile string
	MetricsToken     string
	ClusterToken     string
	MaxBatch         int
	MaxDevices       int
	MaxConnsPerIP    int
	Rules            []detect.Rule

	RedisAddr        string
	RedisPassword    string
	RedisDB          int
	SnapshotInterval time.Duration
	SnapshotMaxBusy  float64
	SnapshotTTL      time.Duration
	IdleEvict        time.Duration

	SelfAddr       string
	Peers          string
	PeersFile      string
	PeersDNS       string
	PeerPort       string
	PeersDNSServer string
	PeersRefresh   time.Duration
	ForwardTimeout time.Duration
}

// parseConfig reads args and then, for the settings args leave out, env
// (via getenv). An invalid value is an error naming the flag or variable.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	c := config{
		Addr:         ":8080",
		WindowSize:   50,
		MinSamples:   10,
		ZThreshold:   detect.DefaultThreshold,
		MinStddev:    1e-9,
		Shards:       4 * runtime.GOMAXPROCS(0),
		QueueLen:     1024,
		MaxStreams:   shard.DefaultMaxStreams,
		HistoryLen:   100,
		MaxBodyBytes: 1 << 20,
		MaxBatch:     server.DefaultMaxBatch,
		MaxDevices:   shard.DefaultMaxDevices,
		LogLevel:     "info",
		StopTimeout:  5 * time.Second,
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  60 * time.Second,
		Detector:     detect.DefaultKind.String(),
		Cooldown:     detect.DefaultCooldown,
		StepFloor:    detect.DefaultStepFloor,

		SnapshotInterval: time.Second,
		SnapshotMaxBusy:  0.25,
		SnapshotTTL:      7 * 24 * time.Hour,
		IdleEvict:        15 * time.Minute,

		PeersRefresh:   5 * time.Second,
		ForwardTimeout: 2 * time.Second,
	}
	fs := flag.NewFlagSet("ai-load-service", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// Flags are declared before the environment is read, so the defaults
	// -h shows are the built-in ones, never values from the environment.
	envs := map[string]string{} // flag name -> variable
	v := func(p flag.Value, name, env, usage string) {
		fs.Var(p, name, usage+" (env "+env+")")
		envs[name] = env
	}
	v((*addrValue)(&c.Addr), "addr", "ADDR", "listen address, host:port; the port a number or a service name")
	v(intIn(&c.WindowSize, 2, detect.MaxWindow), "window-size", "WINDOW_SIZE", "values kept per (device, metric) window")
	v(intIn(&c.MinSamples, 1, detect.MaxWindow), "min-samples", "MIN_SAMPLES", "values a window needs before a sample can be anomalous")
	v(floatIn(&c.ZThreshold, math.SmallestNonzeroFloat64, 1e6), "z-threshold", "Z_THRESHOLD", "|z| at or above which a sample is anomalous")
	v(floatIn(&c.MinStddev, detect.MinMinStddev, 1e300), "min-stddev", "MIN_STDDEV", "floor under the window stddev in the z-score")
	v(intIn(&c.Shards, 1, 4096), "shards", "SHARDS", "shard goroutines owning device state (default 4 × GOMAXPROCS)")
	v(intIn(&c.QueueLen, 1, 1<<20), "queue-len", "QUEUE_LEN", "requests queued per shard before ingest answers 503")
	v(intIn(&c.MaxStreams, 1, shard.MaxStreamsLimit), "max-streams-per-device", "MAX_STREAMS_PER_DEVICE", "metric names one device may have; a request naming more gets 429")
	v(intIn(&c.HistoryLen, 1, 100000), "history-len", "HISTORY_LEN", "alerts remembered per device for GET .../anomalies (about 80 bytes each once held)")
	v(intIn(&c.MaxBodyBytes, 64, 1<<30), "max-body-bytes", "MAX_BODY_BYTES", "largest request body; larger ones get 413")
	v((*levelValue)(&c.LogLevel), "log-level", "LOG_LEVEL", "trace, debug, info, warn, error or disabled")
	v(durIn(&c.DrainDelay, 0, time.Minute), "drain-delay", "DRAIN_DELAY", "after SIGTERM, how long /ready answers 503 before the listener closes")
	v(durIn(&c.StopTimeout, time.Millisecond, 10*time.Minute), "stop-timeout", "STOP_TIMEOUT", "how long in-flight requests may take to finish after SIGTERM")
	v(durIn(&c.ReadTimeout, 10*time.Millisecond, 24*time.Hour), "read-timeout", "READ_TIMEOUT", "how long a request may take to arrive, from its first byte (408 after)")
	v(durIn(&c.WriteTimeout, 10*time.Millisecond, 24*time.Hour), "write-timeout", "WRITE_TIMEOUT", "how long a response write may wait on a client that does not read")
	v(durIn(&c.IdleTimeout, 10*time.Millisecond, 24*time.Hour), "idle-timeout", "IDLE_TIMEOUT", "how long a keep-alive connection may wait for its next request")
	v((*boolValue)(&c.Pprof), "pprof", "PPROF", "serve Go profiles under /debug/pprof/")
	v((*kindValue)(&c.Detector), "detector", "DETECTOR", "default detector: zscore, winsor, ewma or ranges")
	v(&cooldownValue{&c.Cooldown, &c.CooldownTime}, "alert-cooldown", "ALERT_COOLDOWN", "samples (50), or time of the samples' ts (10m), after an alert during which a stream raises no new alert unless |z| doubles")
	v(floatIn(&c.StepFloor, 0, 100), "step-floor", "STEP_FLOOR", "floor under the stddev, in long-run mean steps (winsor, ewma; 0: none)")
	v((*strValue)(&c.RedisAddr), "redis-addr", "REDIS_ADDR", "comma-separated Redis seeds (a cluster is detected); empty: in-memory only")
	v((*secretValue)(&c.RedisPassword), "redis-password", "REDIS_PASSWORD", "Redis password")
	v(intIn(&c.RedisDB, 0, 1<<20), "redis-db", "REDIS_DB", "Redis database number")
	v(durIn(&c.SnapshotInterval, 10*time.Millisecond, time.Hour), "snapshot-interval", "SNAPSHOT_INTERVAL", "how often changed devices are written to Redis")
	v(floatIn(&c.SnapshotMaxBusy, 0.01, 1), "snapshot-max-busy", "SNAPSHOT_MAX_BUSY", "largest share of the time snapshot rounds may take; slower rounds stretch the interval (up to 10x) instead of taking ingest's CPU (1: back to back)")
	v(durIn(&c.SnapshotTTL, time.Second, 10*365*24*time.Hour), "snapshot-ttl", "SNAPSHOT_TTL", "expiry of each device's Redis key")
	v(durIn(&c.IdleEvict, time.Second, 365*24*time.Hour), "idle-evict", "IDLE_EVICT", "devices untouched this long are dropped from memory (Redis mode)")
	v((*strValue)(&c.SelfAddr), "self-addr", "SELF_ADDR", "host:port the other members reach this pod at, or its IP alone (the port is PEER_PORT or ADDR's) (cluster mode)")
	v((*strValue)(&c.Peers), "peers", "PEERS", "cluster members, comma-separated host:port")
	v((*strValue)(&c.PeersFile), "peers-file", "PEERS_FILE", "file of cluster members, one host:port a line, re-read every PEERS_REFRESH")
	v((*strValue)(&c.PeersDNS), "peers-dns", "PEERS_DNS", "name whose A/AAAA records are the cluster members (a headless Service), resolved every PEERS_REFRESH")
	v((*strValue)(&c.PeerPort), "peer-port", "PEER_PORT", "port of the members PEERS_DNS finds (default: ADDR's port)")
	v((*strValue)(&c.PeersDNSServer), "peers-dns-server", "PEERS_DNS_SERVER", "host:port of the DNS server PEERS_DNS is asked (default: the system's resolver)")
	v(durIn(&c.PeersRefresh, 100*time.Millisecond, time.Hour), "peers-refresh", "PEERS_REFRESH", "how often PEERS_FILE is re-read and PEERS_DNS re-resolved")
	v(durIn(&c.ForwardTimeout, 10*time.Millisecond, time.Minute), "forward-timeout", "FORWARD_TIMEOUT", "how long a request forwarded to another member may take")
	v((*strValue)(&c.RulesFile), "detector-config", "DETECTOR_CONFIG", "JSON file of per-metric detector rules")
	v((*secretValue)(&c.IngestTokens), "ingest-tokens", "INGEST_TOKENS", "comma-separated bearer tokens the ingest and read routes require (empty: open)")
	v((*strValue)(&c.IngestTokensFile), "ingest-tokens-file", "INGEST_TOKENS_FILE", "file of bearer tokens, one a line, re-read when it changes (instead of INGEST_TOKENS)")
	v((*secretValue)(&c.MetricsToken), "metrics-token", "METRICS_TOKEN", "bearer token /metrics requires (empty: open)")
	v((*secretValue)(&c.ClusterToken), "cluster-token", "CLUSTER_TOKEN", "bearer token members send each other; requests marked as a member's need it (empty: they carry the client's)")
	v(intIn(&c.MaxBatch, 1, 1000000), "max-batch", "MAX_BATCH", "samples one ingest request may carry; more get 413")
	v(intIn(&c.MaxDevices, 1, 1<<40), "max-devices", "MAX_DEVICES", "devices this pod holds; a request that would add more gets 429")
	v(intIn(&c.MaxConnsPerIP, 0, 1000000), "max-conns-per-ip", "MAX_CONNS_PER_IP", "open connections one client address may have; more get 429 and are closed (0: no bound)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q; settings are flags or environment variables", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		env := envs[f.Name]
		if s := getenv(env); s != "" && !given[f.Name] && envErr == nil {
			if err := f.Value.Set(s); err != nil {
				envErr = fmt.Errorf("invalid %s=%q: %w", env, s, err)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	sources := 0
	for _, src := range []string{c.Peers, c.PeersFile, c.PeersDNS} {
		if src != "" {
			sources++
		}
	}
	switch {
	case sources > 1:
		return c, fmt.Errorf("PEERS, PEERS_FILE and PEERS_DNS are alternatives: set one")
	case sources == 1 && (c.IngestTokens != "" || c.IngestTokensFile != "") && c.ClusterToken == "":
		// Members ask each other for devices' state without a client's
		// credential: open handoff routes would give any device to anyone.
		return c, fmt.Errorf("cluster mode with INGEST_TOKENS or INGEST_TOKENS_FILE needs CLUSTER_TOKEN, the same on every member")
	case sources == 1 && c.SelfAddr == "":
		return c, fmt.Errorf("cluster mode needs SELF_ADDR, the host:port the other members reach this pod at (in Kubernetes the pod IP from the downward API)")
	case c.PeersDNS != "" && c.PeerPort == "":
		c.PeerPort = addrPort(c.Addr)
	}
	if ip, err := netip.ParseAddr(strings.Trim(c.SelfAddr, "[]")); err == nil {
		// A bare IP (a pod's, from the downward API, IPv4 or IPv6, with
		// a zone or not): the port is the members' port.
		port := c.PeerPort
		if port == "" {
			port = addrPort(c.Addr)
		}
		c.SelfAddr = net.JoinHostPort(ip.Unmap().String(), port)
	}
	if c.PeersDNSServer != "" {
		if _, _, err := net.SplitHostPort(c.PeersDNSServer); err != nil || c.PeersDNS == "" {
			return c, fmt.Errorf("PEERS_DNS_SERVER=%q: want host:port, with PEERS_DNS set", c.PeersDNSServer)
		}
	}
	if c.RedisAddr != "" && c.SnapshotTTL <= c.IdleEvict+2*c.SnapshotInterval {
		// A clean device's key is only refreshed when the device changes: it
		// would expire while the device sits in memory, and eviction would
		// then drop the only copy.
		return c, fmt.Errorf("SNAPSHOT_TTL=%s must exceed IDLE_EVICT=%s plus two SNAPSHOT_INTERVAL=%s, or an idle device's key expires before it leaves memory",
			c.SnapshotTTL, c.IdleEvict, c.SnapshotInterval)
	}
	if c.MinSamples > c.WindowSize && c.Detector != detect.EWMA.String() {
		// EWMA counts samples seen, not values in the window (as a rule's
		// settings are checked: detect.Params.Validate).
		return c, fmt.Errorf("MIN_SAMPLES=%d exceeds WINDOW_SIZE=%d: no sample could ever be anomalous", c.MinSamples, c.WindowSize)
	}
	if c.RulesFile != "" {
		data, err := os.ReadFile(c.RulesFile)
		if err != nil {
			return c, fmt.Errorf("cannot read DETECTOR_CONFIG=%q: %w", c.RulesFile, err)
		}
		if c.Rules, err = detect.ParseRules(data, c.params()); err != nil {
			return c, fmt.Errorf("DETECTOR_CONFIG=%q: %w", c.RulesFile, err)
		}
	}
	return c, nil
}

// params are the default detector settings.
func (c config) params() detect.Params {
	k, _ := detect.ParseKind(c.Detector)
	return detect.Params{Kind: k, Window: c.WindowSize, MinSamples: c.MinSamples,
		Threshold: c.ZThreshold, MinStddev: c.MinStddev, Cooldown: c.Cooldown, StepFloor: c.StepFloor,
		CooldownMs: c.CooldownTime.Milliseconds()}
}

// shardOptions maps the configuration onto shard.Options.
func (c config) shardOptions() shard.Options {
	p := c.params()
	// shard.Options: zero means the default, negative means none.
	cooldown, stepFloor := p.Cooldown, p.StepFloor
	if cooldown == 0 {
		cooldown = -1
	}
	if stepFloor == 0 {
		stepFloor = -1
	}
	return shard.Options{
		Shards: c.Shards, Detector: p.Kind, WindowSize: p.Window, MinSamples: p.MinSamples,
		ZThreshold: p.Threshold, MinStddev: p.MinStddev, Cooldown: cooldown, StepFloor: stepFloor, QueueLen: c.QueueLen,
		CooldownTime: time.Duration(p.CooldownMs) * time.Millisecond,
		Rules:        c.Rules, MaxStreams: c.MaxStreams, MaxDevices: c.MaxDevices, HistoryLen: c.HistoryLen,
	}
}

type strValue string

func (s *strValue) Set(v string) error { *s = strValue(v); return nil }
func (s *strValue) String() string     { return string(*s) }

// secretValue is a setting whose value must never be printed, such as a
// password or a token: String, which -h uses for defaults, never reveals
// it, and Set never fails, so no error message quotes it.
type secretValue string

func (s *secretValue) Set(v string) error { *s = secretValue(v); return nil }
func (s *secretValue) String() string     { return "" }

// addrValue is a listen address, checked offline as net.Listen will read
// it: host:port with the host empty, an IP or a DNS name, and the port
// empty (any), a number up to 65535 or a service name known locally.
type addrValue string

func (a *addrValue) Set(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("want host:port such as :8080 or 127.0.0.1:8080: %w", err)
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && !hostName(host) {
		return fmt.Errorf("host %q is not an IP address or a DNS name", host)
	}
	if n, err := strconv.ParseUint(port, 10, 64); err == nil && n > 65535 {
		return fmt.Errorf("port %s is not from 0 to 65535", port)
	} else if err != nil && port != "" {
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Errorf("port %q is not a number from 0 to 65535 or a known service: %w", port, err)
		}
	}
	*a = addrValue(v)
	return nil
}

func (a *addrValue) String() string { return string(*a) }

// hostName reports whether s is a DNS name: dot-separated labels of
// letters, digits and inner hyphens.
func hostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(strings.TrimSuffix(s, "."), ".")
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return false // an all-numeric top label: a malformed IPv4 address, not a name
	}
	for _, label := range labels {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

type boolValue bool

func (b *boolValue) Set(v string) error {
	x, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false")
	}
	*b = boolValue(x)
	return nil
}
func (b *boolValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *boolValue) IsBoolFlag() bool { return true }

type kindValue string

func (k *kindValue) Set(v string) error {
	if _, err := detect.ParseKind(v); err != nil {
		return fmt.Errorf("want zscore, winsor, ewma or ranges")
	}
	*k = kindValue(v)
	return nil
}
func (k *kindValue) String() string { return string(*k) }

type levelValue string

func (l *levelValue) Set(v string) error {
	if _, err := zerolog.ParseLevel(v); err != nil || v == "" {
		return fmt.Errorf("want trace, debug, info, warn, error or disabled")
	}
	*l = levelValue(v)
	return nil
}
func (l *levelValue) String() string { return string(*l) }

type intValue struct {
	p        *int
	min, max int
}

func intIn(p *int, min, max int) *intValue { return &intValue{p, min, max} }

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < v.min || n > v.max {
		return fmt.Errorf("want an integer from %d to %d", v.min, v.max)
	}
	*v.p = n
	return nil
}

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return strconv.Itoa(*v.p)
}

type floatValue struct {
	p        *float64
	min, max float64
}

func floatIn(p *float64, min, max float64) *floatValue { return &floatValue{p, min, max} }

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f >= v.min && f <= v.max) {
		return fmt.Errorf("want a number from %g to %g", v.min, v.max)
	}
	*v.p = f
	return nil
}

func (v *floatValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return strconv.FormatFloat(*v.p, 'g', -1, 64)
}

// cooldownValue is ALERT_COOLDOWN: samples or a duration.
type cooldownValue struct {
	samples *int
	time    *time.Duration
}

func (v *cooldownValue) Set(s string) error {
	n, ms, err := detect.ParseCooldown(s)
	if err != nil {
		return err
	}
	*v.samples, *v.time = n, time.Duration(ms)*time.Millisecond
	return nil
}

func (v *cooldownValue) String() string {
	switch {
	case v == nil || v.samples == nil:
		return ""
	case *v.time > 0:
		return v.time.String()
	}
	return strconv.Itoa(*v.samples)
}

type durValue struct {
	p        *time.Duration
	min, max time.Duration
}

func durIn(p *time.Duration, min, max time.Duration) *durValue { return &durValue{p, min, max} }

func (v *durValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < v.min || d > v.max {
		return fmt.Errorf("want a duration like 5s from %s to %s", v.min, v.max)
	}
	*v.p = d
	return nil
}

func (v *durValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return v.p.String()
}

func main() {
	c, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ai-load-service: %s\n", err)
		os.Exit(2)
	}
	lvl, _ := zerolog.ParseLevel(c.LogLevel)
	log := zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Logger()
	if err := run(c, log); err != nil {
		log.Fatal().Err(err).Msg("stopped")
	}
}

// run serves until SIGTERM or SIGINT, then stops in reverse order of start.
func run(c config, log zerolog.Logger) error {
	start := time.Now()
	opts := c.shardOptions()
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("invalid detector settings: %w", err)
	}
	var store *persist.Writer
	extra := []*metrics.Set{buildInfo()}
	state := "in-memory only (set REDIS_ADDR to persist)"
	if addrs := c.redisAddrs(); len(addrs) > 0 {
		store = persist.New(persist.Options{Addrs: addrs, Password: c.RedisPassword, DB: c.RedisDB,
			Interval: c.SnapshotInterval, TTL: c.SnapshotTTL, Log: log, Fence: c.clustered(),
			// Stretched rounds stay within the TTL rule checked above.
			MaxBusy: c.SnapshotMaxBusy, MaxInterval: min(10*c.SnapshotInterval, (c.SnapshotTTL-c.IdleEvict)/2)})
		opts.Store, opts.IdleEvict = store, c.IdleEvict
		extra = append(extra, store.Metrics())
		state = "redis " + c.RedisAddr
	}
	creds, err := server.NewCredentials(server.CredentialOptions{IngestTokens: c.IngestTokens, IngestTokensFile: c.IngestTokensFile,
		MetricsToken: c.MetricsToken, ClusterToken: c.ClusterToken, Log: log})
	if err != nil {
		return err
	}
	defer creds.Stop()
	clusterMetrics := metrics.NewSet()
	var handoff *server.Handoff
	members, err := c.membership(log, clusterMetrics, func(old, v *cluster.View) { handoff.ViewChanged(old, v) })
	if err != nil {
		return err
	}
	if members != nil {
		// Devices a member does not hold are asked of the members that
		// may hold them first, then of Redis (see server/handoff.go).
		var next shard.Store
		if store != nil {
			next = store
		}
		handoff = server.NewHandoff(server.HandoffOptions{Members: members, Next: next, Timeout: c.ForwardTimeout, Idle: c.IdleTimeout,
			Log: log, Metrics: clusterMetrics, Credentials: creds})
		opts.Store, opts.LoadOnly = handoff, store == nil
		// Tombstones outlive the slowest view to catch up (a DNS cache
		// plus a few refreshes).
		opts.Tombstone = max(time.Minute, min(6*c.PeersRefresh, 10*time.Minute))
	}
	set := shard.New(opts)
	if store != nil {
		store.Start(set)
	}
	if members != nil {
		handoff.Start(set)
		defer handoff.Stop() // after stopState: the shards' loads are answered first
		members.Start()
		defer members.Stop()
		extra = append(extra, clusterMetrics)
		state += ", cluster member " + c.SelfAddr
	}
	h := server.New(server.Options{Shards: set, MaxBodyBytes: c.MaxBodyBytes, Log: log, Pprof: c.Pprof, Metrics: extra,
		Timeouts: server.Timeouts{Read: c.ReadTimeout, Write: c.WriteTimeout, Idle: c.IdleTimeout},
		Cluster:  members, ForwardTimeout: c.ForwardTimeout, Handoff: handoff,
		Credentials: creds, MaxBatch: c.MaxBatch, MaxConnsPerIP: c.MaxConnsPerIP})
	// No ReadTimeout, WriteTimeout or IdleTimeout: the Listener from
	// h.Listen enforces them without a timer update per request.
	srv := h.NewServer()
	nl, err := net.Listen("tcp", c.Addr)
	if err != nil {
		stopState(store, set, log)
		return fmt.Errorf("cannot listen on ADDR=%q: %w", c.Addr, err)
	}
	ln := h.Listen(nl)
	defer ln.Stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	h.SetReady()
	log.Info().Str("version", version).Str("addr", ln.Addr().String()).Int("shards", set.Len()).Int("window", c.WindowSize).
		Float64("z_threshold", c.ZThreshold).Str("detector", c.Detector).Str("alert_cooldown", (&cooldownValue{&c.Cooldown, &c.CooldownTime}).String()).
		Int("detector_rules", len(c.Rules)).Str("state", state).
		Dur("startup", time.Since(start)).Msg("serving")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Info().Str("signal", s.String()).Msg("stopping")
	case err := <-served:
		stopState(store, set, log)
		return fmt.Errorf("server failed: %w", err)
	}
	// Later signals must not kill the stop half-way (the default action
	// would, once signal.Stop restored it): the final snapshot is what
	// keeps acknowledged samples. SIGKILL still ends the process.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		for {
			select {
			case s := <-sig:
				log.Warn().Str("signal", s.String()).Msg("already stopping: writing the final snapshot (SIGKILL abandons it)")
			case <-stopped:
				signal.Stop(sig)
				return
			}
		}
	}()

	if members != nil {
		// From its own point of view the pod now owns nothing: what
		// reaches it goes to the others, while what it holds is still
		// served to members that send it here.
		members.Leave()
	}
	h.SetDraining()
	if c.DrainDelay > 0 {
		time.Sleep(c.DrainDelay)
		log.Info().Dur("took", c.DrainDelay).Msg("drain delay over")
	}
	if members != nil {
		// Offer every device held to its new owner while the server still
		// answers their handoffs; what is not taken goes to the final
		// snapshot.
		t := time.Now()
		hctx, hcancel := context.WithTimeout(context.Background(), c.StopTimeout)
		n, err := h.HandOver(hctx)
		hcancel()
		ev := log.Info()
		if err != nil {
			ev = log.Warn().Err(err)
		}
		ev.Int("offered", n).Int("held", set.Devices()).Dur("took", time.Since(t)).Msg("devices handed over to their new owners")
	}
	t := time.Now()
	if members != nil {
		// A member answers handoffs until its final snapshot is written:
		// a new owner must not read a device from Redis while the
		// snapshot it would read is still to come. Clients get 503 from
		// the seal on.
		sealAndFlush(store, set, log)
		t = time.Now()
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.StopTimeout)
	defer cancel()
	if err := srv.ShutdownWithContext(ctx); err != nil {
		log.Warn().Err(err).Msg("in-flight requests did not finish in STOP_TIMEOUT")
	}
	ln.Stop()
	log.Info().Dur("took", time.Since(t)).Msg("http server stopped")
	if members == nil {
		sealAndFlush(store, set, log)
	}
	stopShards(set, log)
	return nil
}

// version is the build's version, set at build time:
// go build -ldflags "-X main.version=1.0.0" (the Dockerfile does).
var version = "dev"

// buildInfo is the build_info gauge: always 1, its labels say what runs.
func buildInfo() *metrics.Set {
	ms := metrics.NewSet()
	ms.NewGauge(fmt.Sprintf(`build_info{version=%q,goversion=%q}`, version, runtime.Version()), func() float64 { return 1 })
	return ms
}

// flushTimeout bounds the final snapshot, so SIGTERM still exits promptly
// when Redis is unreachable.
const flushTimeout = 4 * time.Second

// stopState seals ingest (requests still arriving get 503; those admitted
// are applied), writes the last snapshot when persisting, then stops the
// shards. Sealing comes first so that every request answered 200 is in
// the final snapshot, even one that finished after STOP_TIMEOUT.
func stopState(store *persist.Writer, set *shard.Set, log zerolog.Logger) {
	sealAndFlush(store, set, log)
	stopShards(set, log)
}

// sealAndFlush is stopState but for stopping the shards: they still
// answer handoffs.
func sealAndFlush(store *persist.Writer, set *shard.Set, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	t := time.Now()
	// Sealing gets a quarter of the budget: past it, the loads admitted
	// requests wait on are abandoned (their devices unrestored, reconciled
	// below if Redis answers), so the final snapshot keeps its time.
	sealCtx, sealCancel := context.WithTimeout(ctx, flushTimeout/4)
	err := set.Seal(sealCtx)
	sealCancel()
	if err != nil {
		log.Warn().Err(err).Msg("requests waited for device loads at the seal deadline: applied to fresh state, to be reconciled with redis")
	} else {
		log.Info().Dur("took", time.Since(t)).Msg("ingest sealed")
	}
	if store != nil {
		t := time.Now()
		rep, err := store.Stop(ctx)
		ev := log.Info()
		msg := "final snapshot written"
		if err != nil {
			ev = log.Error().Err(err)
			msg = "final snapshot incomplete: not_written devices lose their changes since the last snapshot, not_reconciled ones their samples since redis failed them"
		}
		ev.Dur("took", time.Since(t)).Int("written", rep.Written).Int("reconciled", rep.Reconciled).
			Int("not_written", rep.Pending).Int("not_reconciled", rep.Unreconciled).Int("newer_version", rep.Newer).Msg(msg)
	}
}

func stopShards(set *shard.Set, log zerolog.Logger) {
	t := time.Now()
	set.Stop()
	log.Info().Dur("took", time.Since(t)).Msg("shards stopped")
}

// membership returns the cluster membership the settings describe, or nil
// for a cluster of one.
func (c config) membership(log zerolog.Logger, ms *metrics.Set, onChange func(old, v *cluster.View)) (*cluster.Membership, error) {
	if !c.clustered() {
		return nil, nil
	}
	var static []string
	for _, p := range strings.Split(c.Peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			static = append(static, p)
		}
	}
	var resolver *net.Resolver
	if c.PeersDNSServer != "" {
		resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, c.PeersDNSServer)
		}}
	}
	m, err := cluster.New(cluster.Options{Self: c.SelfAddr, Static: static, File: c.PeersFile, DNS: c.PeersDNS, Port: c.PeerPort, Resolver: resolver,
		Refresh: c.PeersRefresh, Log: log, Metrics: ms, OnChange: onChange})
	if err != nil {
		return nil, fmt.Errorf("cluster settings: %w", err)
	}
	return m, nil
}

// addrPort is the port of a listen address as a number: a service name
// (":http-alt") is looked up, since members address each other by number.
func addrPort(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	if n, err := net.LookupPort("tcp", port); err == nil {
		return strconv.Itoa(n)
	}
	return port
}

// clustered reports whether a peer source is set (cluster mode).
func (c config) clustered() bool { return c.Peers != "" || c.PeersFile != "" || c.PeersDNS != "" }

func (c config) redisAddrs() []string {
	var out []string
	for _, a := range strings.Split(c.RedisAddr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
