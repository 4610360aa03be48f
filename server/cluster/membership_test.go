package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
)

func TestParseAddr(t *testing.T) {
	ok := func(in, want string) {
		t.Helper()
		got, err := parseAddr(in)
		if err != nil || got != want {
			t.Fatalf("unexpected parseAddr(%q); got %q, %v; want %q", in, got, err, want)
		}
	}
	ok("10.0.0.1:8080", "10.0.0.1:8080")
	ok(" 10.0.0.1:8080\t", "10.0.0.1:8080")
	ok("10.0.0.1:08080", "10.0.0.1:8080")
	ok("[::1]:80", "[::1]:80")
	ok("[0:0::1]:80", "[::1]:80")
	ok("[FD00::A]:80", "[fd00::a]:80")
	ok("[::ffff:10.0.0.1]:80", "10.0.0.1:80")
	ok("[fe80::1%eth0]:80", "[fe80::1%eth0]:80")
	ok("Pod-1.Peers.NS.svc.cluster.local:8080", "pod-1.peers.ns.svc.cluster.local:8080")
	ok("localhost:65535", "localhost:65535")

	bad := func(in string) {
		t.Helper()
		if got, err := parseAddr(in); err == nil {
			t.Fatalf("expected an error for %q; got %q", in, got)
		}
	}
	bad("")
	bad("10.0.0.1")
	bad(":8080")
	bad("10.0.0.1:")
	bad("10.0.0.1:0")
	bad("10.0.0.1:65536")
	bad("10.0.0.1:http")
	bad("::1:80")
	bad("http://10.0.0.1:80")
	bad("a b:80")
	bad("host/path:80")
}

func TestParseList(t *testing.T) {
	got, err := parseList([]string{"b:1", "a:1", "[::1]:2", "B:1", "[0::1]:2"})
	if want := []string{"[::1]:2", "a:1", "b:1"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("unexpected list; got %q, %v; want %q", got, err, want)
	}
	if _, err := parseList([]string{"a:1", "b"}); err == nil {
		t.Fatalf("expected an error for a bad entry")
	}
}

func TestNew(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
		err  string // part of the error; "" for none
	}{
		{"Static", Options{Self: "a:1", Static: []string{"a:1", "b:1"}}, ""},
		{"File", Options{Self: "a:1", File: "/nonexistent/peers"}, ""}, // read at Start, not New
		{"DNS", Options{Self: "10.0.0.1:1", DNS: "peers.test.", Port: "8080"}, ""},
		{"NoSelf", Options{Static: []string{"a:1"}}, "self"},
		{"BadSelf", Options{Self: "a", Static: []string{"a:1"}}, "self"},
		{"NoSource", Options{Self: "a:1"}, "got 0 peer sources"},
		{"TwoSources", Options{Self: "a:1", Static: []string{"a:1"}, File: "peers"}, "got 2 peer sources"},
		{"ThreeSources", Options{Self: "a:1", Static: []string{"a:1"}, File: "peers", DNS: "x.", Port: "1"}, "got 3 peer sources"},
		{"BadStatic", Options{Self: "a:1", Static: []string{"a:1", "b"}}, `"b"`},
		{"DNSNoPort", Options{Self: "a:1", DNS: "peers.test."}, "invalid peer port"},
		{"DNSBadPort", Options{Self: "a:1", DNS: "peers.test.", Port: "70000"}, "invalid peer port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.opts)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if v := m.View(); v == nil || len(v.Members) != 0 || v.Seq != 0 {
					t.Fatalf("unexpected view before Start; got %+v; want empty", v)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("unexpected error; got %v; want one containing %q", err, tt.err)
			}
		})
	}
}

// MustStart returns a started Membership stopped at the end of the test.
func MustStart(tb testing.TB, opts Options) *Membership {
	tb.Helper()
	m, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	m.Start()
	tb.Cleanup(m.Stop)
	return m
}

// writeFile replaces path atomically, as a Kubernetes ConfigMap volume
// does, so a refresh never reads it half written.
func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := replaceFile(path, content); err != nil {
		tb.Fatal(err)
	}
}

func replaceFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitFor polls cond for up to 5s.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func checkMembers(tb testing.TB, v *View, want ...string) {
	tb.Helper()
	if !slices.Equal(v.Members, want) {
		tb.Fatalf("unexpected members; got %q; want %q", v.Members, want)
	}
}

func TestStatic(t *testing.T) {
	m := MustStart(t, Options{Self: "B:1", Static: []string{"c:1", "b:1", "a:1", "b:01"}})
	v := m.View()
	checkMembers(t, v, "a:1", "b:1", "c:1")
	if v.Self != "b:1" || !v.HasSelf() || v.Seq != 1 || v.Changed.IsZero() {
		t.Fatalf("unexpected view; got %+v; want Self b:1 among members, Seq 1, Changed set", v)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatalf("unexpected Refresh error: %v", err)
	}
	if got := m.View(); got != v {
		t.Fatalf("unexpected new view after an unchanged refresh; got %+v; want the same %+v", got, v)
	}
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	// Each step rewrites the file and refreshes; an error keeps the view.
	steps := []struct {
		name    string
		content string // "-" removes the file
		err     bool
		want    []string
	}{
		{"Initial", "10.0.0.2:80\n10.0.0.1:80\n", false, []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{"CommentsAndBlanks", "# peers\n\n  10.0.0.1:80  # me\n\t\n10.0.0.3:80\n#10.0.0.9:80\n", false, []string{"10.0.0.1:80", "10.0.0.3:80"}},
		{"Duplicates", "10.0.0.1:80\n10.0.0.1:80\n[::ffff:10.0.0.1]:80\n10.0.0.4:80", false, []string{"10.0.0.1:80", "10.0.0.4:80"}},
		{"CRLF", "10.0.0.1:80\r\n10.0.0.5:80\r\n", false, []string{"10.0.0.1:80", "10.0.0.5:80"}},
		{"BadLine", "10.0.0.1:80\n10.0.0.6\n", true, []string{"10.0.0.1:80", "10.0.0.5:80"}},
		{"Missing", "-", true, []string{"10.0.0.1:80", "10.0.0.5:80"}},
		{"Empty", "", false, nil},
		{"OnlyComments", "# nobody yet\n", false, nil},
		{"Back", "10.0.0.7:80", false, []string{"10.0.0.7:80"}},
	}
	writeFile(t, path, steps[0].content)
	m := MustStart(t, Options{Self: "10.0.0.1:80", File: path, Refresh: time.Hour})
	for i, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if i > 0 {
				if s.content == "-" {
					os.Remove(path)
				} else {
					writeFile(t, path, s.content)
				}
				err := m.Refresh(context.Background())
				if (err != nil) != s.err {
					t.Fatalf("unexpected Refresh error; got %v; want error: %v", err, s.err)
				}
				if s.name == "BadLine" && (err == nil || !strings.Contains(err.Error(), "line 2")) {
					t.Fatalf("unexpected error for a bad line; got %v; want one naming line 2", err)
				}
			}
			checkMembers(t, m.View(), s.want...)
		})
	}
}

func TestFileTimer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	writeFile(t, path, "10.0.0.1:80\n")
	m := MustStart(t, Options{Self: "10.0.0.1:80", File: path, Refresh: 20 * time.Millisecond})
	checkMembers(t, m.View(), "10.0.0.1:80")
	writeFile(t, path, "10.0.0.1:80\n10.0.0.2:80\n")
	waitFor(t, "the timer to re-read the file", func() bool { return len(m.View().Members) == 2 })
	writeFile(t, path, "10.0.0.2:80\n")
	waitFor(t, "the timer to re-read the file again", func() bool { return len(m.View().Members) == 1 })
	checkMembers(t, m.View(), "10.0.0.2:80")
	if v := m.View(); v.Seq != 3 || v.HasSelf() {
		t.Fatalf("unexpected view; got Seq %d, HasSelf %v; want 3, false", v.Seq, v.HasSelf())
	}
}

func TestLeave(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	writeFile(t, path, "a:1\nb:1\nc:1\n")
	var changes []string
	m := MustStart(t, Options{Self: "b:1", File: path, Refresh: time.Hour, OnChange: func(old, cur *View) {
		j, l := cur.Diff(old)
		changes = append(changes, fmt.Sprintf("%d->%d +%v -%v self=%v", old.Seq, cur.Seq, j, l, cur.HasSelf()))
	}})
	steps := []struct {
		name    string
		do      func()
		want    []string
		hasSelf bool
	}{
		{"Started", func() {}, []string{"a:1", "b:1", "c:1"}, true},
		{"Leave", m.Leave, []string{"a:1", "c:1"}, false},
		{"LeaveAgain", m.Leave, []string{"a:1", "c:1"}, false},
		{"RefreshKeepsSelfOut", func() {
			writeFile(t, path, "a:1\nb:1\nc:1\nd:1\n")
			if err := m.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
		}, []string{"a:1", "c:1", "d:1"}, false},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.do()
			v := m.View()
			checkMembers(t, v, s.want...)
			if v.HasSelf() != s.hasSelf {
				t.Fatalf("unexpected HasSelf; got %v; want %v", v.HasSelf(), s.hasSelf)
			}
		})
	}
	want := []string{"0->1 +[a:1 b:1 c:1] -[] self=true", "1->2 +[] -[b:1] self=false", "2->3 +[d:1] -[] self=false"}
	if !slices.Equal(changes, want) {
		t.Fatalf("unexpected OnChange calls; got %q; want %q", changes, want)
	}
	if v := NewView("b:1", []string{"a:1"}); v.Owner([]byte("x")) == "b:1" {
		t.Fatalf("a view without Self gave Self a device")
	}
}

// gate replaces m's source before Start: each read is counted and then
// waits for a token on the returned channel (or for its ctx to end).
func gate(m *Membership, reads *atomic.Int64) chan struct{} {
	tokens := make(chan struct{}, 100)
	src := m.source
	m.source = func(ctx context.Context) ([]string, error) {
		reads.Add(1)
		select {
		case <-tokens:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return src(ctx)
	}
	return tokens
}

func TestRefreshCoalesces(t *testing.T) {
	m, err := New(Options{Self: "a:1", Static: []string{"a:1"}, Refresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	tokens := gate(m, &reads)
	for range cap(tokens) {
		tokens <- struct{}{}
	}
	m.Start()
	defer m.Stop()

	// Calls arriving together share a refresh: one, or two if the first
	// caller's refresh started before the others asked (three on a slow
	// machine that spread the calls over more than minGap).
	reads.Store(0)
	start := time.Now()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if err := m.Refresh(context.Background()); err != nil {
				t.Errorf("unexpected Refresh error: %v", err)
			}
		})
	}
	wg.Wait()
	if got, most := reads.Load(), int64(time.Since(start)/minGap)+1; got < 1 || got > most {
		t.Fatalf("unexpected real refreshes for 50 concurrent calls in %v; got %d; want 1 to %d", time.Since(start), got, most)
	}

	// Back-to-back calls are held to one refresh per minGap.
	reads.Store(0)
	start = time.Now()
	for time.Since(start) < 5*minGap {
		if err := m.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got, most := reads.Load(), int64(time.Since(start)/minGap)+1; got > most {
		t.Fatalf("unexpected real refreshes in %v; got %d; want at most %d", time.Since(start), got, most)
	}
}

// A Refresh call never takes the result of a refresh that started before
// it: a caller that saw a 421 needs the source as of then.
func TestRefreshStartsAfterCall(t *testing.T) {
	m, err := New(Options{Self: "a:1", Static: []string{"a:1"}, Refresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	tokens := gate(m, &reads)
	tokens <- struct{}{}
	m.Start()
	defer m.Stop()
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- m.Refresh(context.Background()) }()
	waitFor(t, "the first refresh to start", func() bool { return reads.Load() == 2 })
	go func() { second <- m.Refresh(context.Background()) }()
	time.Sleep(20 * time.Millisecond) // let the second call join whatever it will join
	tokens <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a refresh for the second call", func() bool { return reads.Load() == 3 })
	select {
	case err := <-second:
		t.Fatalf("the second call returned (%v) with a refresh that started before it", err)
	case <-time.After(20 * time.Millisecond):
	}
	tokens <- struct{}{}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

func TestRefreshNotRunning(t *testing.T) {
	ms := metrics.NewSet()
	m, err := New(Options{Self: "a:1", Static: []string{"a:1"}, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("unexpected Refresh error before Start; got %v; want ErrNotRunning", err)
	}
	var reads atomic.Int64
	tokens := gate(m, &reads)
	tokens <- struct{}{}
	m.Start()
	// The next refresh hangs until Stop: its caller gets ErrNotRunning,
	// and the cut-short refresh is not the source's failure.
	waiting := make(chan error)
	go func() { waiting <- m.Refresh(context.Background()) }()
	waitFor(t, "the refresh to start", func() bool { return reads.Load() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := m.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unexpected Refresh error when ctx ends; got %v; want DeadlineExceeded", err)
	}
	m.Stop()
	if err := <-waiting; !errors.Is(err, ErrNotRunning) {
		t.Fatalf("unexpected error of a Refresh waiting at Stop; got %v; want ErrNotRunning", err)
	}
	if err := m.Refresh(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("unexpected Refresh error after Stop; got %v; want ErrNotRunning", err)
	}
	if got := ms.GetOrCreateCounter("cluster_refresh_errors_total").Get(); got != 0 {
		t.Fatalf("unexpected refresh errors counted at Stop; got %d; want 0", got)
	}
	m.Stop() // twice is fine
	checkMembers(t, m.View(), "a:1")
}

// syncBuffer is a log sink safe for the refresh goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

func TestLogsAndMetrics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	writeFile(t, path, "a:1\nb:1\n")
	var logs syncBuffer
	ms := metrics.NewSet()
	m := MustStart(t, Options{Self: "a:1", File: path, Refresh: time.Hour, Log: zerolog.New(&logs), Metrics: ms})
	writeFile(t, path, "a:1\nc:1\n")
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	for range 3 {
		if err := m.Refresh(context.Background()); err == nil {
			t.Fatalf("expected an error for a missing file")
		}
	}
	writeFile(t, path, "a:1\nc:1\n")
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"level":"info","joined":["a:1","b:1"],"left":[],"members":["a:1","b:1"],"seq":1,"self":true,"message":"cluster view changed"}`,
		`{"level":"info","joined":["c:1"],"left":["b:1"],"members":["a:1","c:1"],"seq":2,"self":true,"message":"cluster view changed"}`,
		`{"level":"warn","error":"cannot read peers file: open ` + path + `: no such file or directory","failures":1,"members":["a:1","c:1"],"message":"cannot refresh cluster members; keeping the current view"}`,
		`{"level":"info","failures":3,"message":"cluster members refreshed again"}`,
	}
	if got := logs.lines(); !slices.Equal(got, want) {
		t.Fatalf("unexpected logs;\ngot  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	var b bytes.Buffer
	ms.WritePrometheus(&b)
	for _, line := range []string{"cluster_members 2", "cluster_view_changes_total 2", "cluster_refresh_errors_total 3"} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Fatalf("missing %q in metrics:\n%s", line, b.String())
		}
	}
}

// TestViewWhileRefreshing runs under -race: readers load views and route
// while the file changes and refreshes, timed and asked for, replace them.
func TestViewWhileRefreshing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	writeFile(t, path, "a:1\n")
	m := MustStart(t, Options{Self: "a:1", File: path, Refresh: time.Millisecond})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			var seq uint64
			id := []byte(fmt.Sprintf("dev-%d", r))
			for {
				select {
				case <-stop:
					return
				default:
				}
				v := m.View()
				if v.Seq < seq {
					t.Errorf("view went back from Seq %d to %d", seq, v.Seq)
					return
				}
				seq = v.Seq
				if o := v.Owner(id); len(v.Members) > 0 && !slices.Contains(v.Members, o) {
					t.Errorf("owner %q is not a member of %q", o, v.Members)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 10 {
			if err := replaceFile(path, fmt.Sprintf("a:1\nb:%d\n", i+1)); err != nil {
				t.Error(err)
			}
			if err := m.Refresh(context.Background()); err != nil {
				t.Errorf("unexpected Refresh error: %v", err)
			}
		}
	})
	wg.Go(func() {
		for range 10 {
			m.Refresh(context.Background())
		}
	})
	time.Sleep(100 * time.Millisecond)
	m.Leave()
	waitFor(t, "the last file", func() bool { return slices.Equal(m.View().Members, []string{"b:10"}) })
	close(stop)
	wg.Wait()
	checkMembers(t, m.View(), "b:10")
}

// TestSuspect: a suspected member is out of the view until it is heard
// from, or until the first refresh after its time; Self is never taken
// out; a refresh while it is suspected keeps it out.
func TestSuspect(t *testing.T) {
	m := MustStart(t, Options{Self: "10.0.0.1:80", Static: []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}, Refresh: time.Hour})
	hour := time.Now().Add(time.Hour)
	m.Suspect("10.0.0.1:80", hour)
	m.Suspect("10.0.0.3:80", hour)
	m.Suspect("10.0.0.3:80", time.Now().Add(time.Minute)) // earlier: no change
	checkMembers(t, m.View(), "10.0.0.1:80", "10.0.0.2:80")
	if s := m.Suspects(); len(s) != 1 || s[0].Member != "10.0.0.3:80" || !s[0].Until.Equal(hour) {
		t.Fatalf("suspects %v", s)
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMembers(t, m.View(), "10.0.0.1:80", "10.0.0.2:80")
	m.Unsuspect("10.0.0.3:80")
	checkMembers(t, m.View(), "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	m.Suspect("10.0.0.2:80", time.Now().Add(time.Millisecond))
	checkMembers(t, m.View(), "10.0.0.1:80", "10.0.0.3:80")
	time.Sleep(2 * time.Millisecond)
	if m.Suspects() != nil {
		t.Fatalf("an expired suspect is still listed (and passed on): %v", m.Suspects())
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMembers(t, m.View(), "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	if m.Suspects() != nil {
		t.Fatalf("suspects left: %v", m.Suspects())
	}
}
