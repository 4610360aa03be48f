package server

// Failing tests from hostile review O of credentials, request limits and
// MAX_DEVICES (issue 15, first part). Each comment tells the defect, how
// the test reproduces it, and the behaviour it wants.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// reviewOPods starts a two-member cluster, each member with its own
// credentials and shard options.
func reviewOPods(t *testing.T, creds [2]*Credentials, so [2]shard.Options) ([]*pod, []string) {
	t.Helper()
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := []*pod{
		reviewFPod(t, addrs[0], file, so[0], Options{Credentials: creds[0]}),
		reviewFPod(t, addrs[1], file, so[1], Options{Credentials: creds[1]}),
	}
	return pods, addrs
}

// TestReviewOAnalyzeMergesUnderIngestTokens: /analyze in cluster mode
// merges every member's /analyze?scope=local, which forwarder.summarize
// asks with a bare f.client.GetTimeout: no Authorization (neither the
// client's nor CLUSTER_TOKEN) and no forwarded marker. With INGEST_TOKENS
// set, /analyze is an ingest-class route, so every other member answers
// 401 and is listed as "unreachable"; the cluster-wide summary silently
// covers this pod alone.
//
// Reproduced with two members sharing INGEST_TOKENS (and, second case,
// CLUSTER_TOKEN): a device owned by member b gets a sample; GET /analyze
// with a valid token on member a.
//
// Correct: the merge request carries a credential the other members accept
// (the cluster token, or the client's), so /analyze counts b's device and
// lists no member as unreachable.
func TestReviewOAnalyzeMergesUnderIngestTokens(t *testing.T) {
	for name, o := range map[string]CredentialOptions{
		"ingest tokens":                {IngestTokens: tokA},
		"ingest tokens, cluster token": {IngestTokens: tokA, ClusterToken: tokC},
	} {
		t.Run(name, func(t *testing.T) {
			c := mustCredentials(t, o)
			pods, addrs := reviewOPods(t, [2]*Credentials{c, c}, [2]shard.Options{})
			dev := deviceOwnedBy(addrs[1], addrs)
			if code, out := post(t, pods[1].addr, sample(dev, 1000, `"temp":1`), "Authorization", "Bearer "+tokA); code != 200 {
				t.Fatalf("ingest: %d %s", code, out)
			}
			code, _, body := call(t, "http://"+pods[0].addr, "GET", "/analyze", "", bearerHdr(tokA))
			var a struct {
				Devices     int      `json:"devices"`
				Unreachable []string `json:"unreachable"`
			}
			if err := json.Unmarshal([]byte(body), &a); err != nil || code != 200 {
				t.Fatalf("/analyze: %d %s", code, body)
			}
			if a.Devices != 1 || len(a.Unreachable) != 0 {
				t.Fatalf("/analyze on member a: devices %d, unreachable %v; want 1 device (b's) and no member unreachable: %s",
					a.Devices, a.Unreachable, strings.TrimSpace(body))
			}
		})
	}
}

// TestReviewOForwardedRead401Becomes503: the commit turns a member's 401
// to a forwarded ingest part into a 503 ("this pod took the client's
// credential and its member did not: the pods' tokens differ, which is
// not the client's to fix"; TestClusterTokenMismatch). The read path
// (forwarder.read) was not changed: it copies the owner's status and body
// through, so a client whose token this pod accepted gets 401 "missing or
// invalid bearer token" for GET /api/v1/devices/{d} of a device another
// member owns, telling it to fix a credential that is fine.
//
// Reproduced with two members whose CLUSTER_TOKENs differ (a rotation half
// done) and the same INGEST_TOKENS: the device owned by b, read through a.
//
// Correct: as for ingest, 503 naming the member and the cause, not 401.
func TestReviewOForwardedRead401Becomes503(t *testing.T) {
	ca := mustCredentials(t, CredentialOptions{IngestTokens: tokA, ClusterToken: tokC})
	cb := mustCredentials(t, CredentialOptions{IngestTokens: tokA, ClusterToken: strings.Replace(tokC, "cluster", "CLUSTER", 1)})
	pods, addrs := reviewOPods(t, [2]*Credentials{ca, cb}, [2]shard.Options{})
	dev := deviceOwnedBy(addrs[1], addrs)
	if code, out := post(t, pods[1].addr, sample(dev, 1000, `"temp":1`), "Authorization", "Bearer "+tokA); code != 200 {
		t.Fatalf("ingest on the owner: %d %s", code, out)
	}
	code, _, body := call(t, "http://"+pods[0].addr, "GET", "/api/v1/devices/"+dev, "", bearerHdr(tokA))
	if code != 503 {
		t.Fatalf("read through a non-owner with a valid client token, members' tokens differing: %d %s; want 503 (not the client's credential at fault)", code, strings.TrimSpace(body))
	}
}

// TestReviewOClusterDeviceLimitIs429: in cluster mode a request with a
// part for another member and a part for this pod applies its local part
// through applyPart; when that part would pass MAX_DEVICES, Set.Ingest
// returns a *shard.DeviceLimitError and sendParts records
// statusOf(err). statusOf knows *Error, StreamLimitError, ErrOverloaded
// and ErrStopped but not DeviceLimitError (added by this commit), so the
// client gets 500 "internal"-class status for a limit it should see as 429.
//
// Reproduced with member a at MAX_DEVICES=1 holding one device; a batch
// [device owned by b, new device owned by a] posted to a.
//
// Correct: 429, as the same refusal gets on a single pod (writeError), with
// the sample b applied listed in "applied".
func TestReviewOClusterDeviceLimitIs429(t *testing.T) {
	pods, addrs := reviewOPods(t, [2]*Credentials{}, [2]shard.Options{{MaxDevices: 1}, {}})
	a := pods[0]
	var mine []string
	for i := 0; len(mine) < 2; i++ {
		if id := fmt.Sprint("ro", i); cluster.NewView(addrs[0], addrs).Owner([]byte(id)) == addrs[0] {
			mine = append(mine, id)
		}
	}
	theirs := deviceOwnedBy(addrs[1], addrs)
	if code, out := post(t, a.addr, sample(mine[0], 1000, `"t":1`)); code != 200 {
		t.Fatalf("first device: %d %s", code, out)
	}
	code, out := post(t, a.addr, "["+sample(theirs, 1000, `"t":1`)+","+sample(mine[1], 1000, `"t":1`)+"]")
	if code != 429 {
		t.Fatalf("batch whose local part passes MAX_DEVICES: %d %s; want 429", code, strings.TrimSpace(string(out)))
	}
}

// TestReviewOPartialCounted: "rejections_total{reason} for every error
// written" — but writeError hands a *partialError to writePartial and
// returns before h.rejected, so a request answered in part (503 or 4xx
// with "applied") is counted in requests_total with its error status and
// nowhere in rejections_total.
//
// Reproduced with member a and a fake member b that answers 421 to every
// forwarded part: a batch with one sample for each gets 503 with
// applied [1].
//
// Correct: the 503 is counted in rejections_total (under some reason).
func TestReviewOPartialCounted(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := reviewFPod(t, addrs[0], file, shard.Options{}, Options{})
	startFake(t, addrs[1], answer421)
	mine, gone := deviceOwnedBy(addrs[0], addrs), deviceOwnedBy(addrs[1], addrs)
	code, out := post(t, a.addr, "["+sample(gone, 1, `"m":1`)+","+sample(mine, 2, `"m":1`)+"]")
	if code != 503 || !strings.Contains(string(out), `"applied":[1]`) {
		t.Fatalf("setup: %d %s; want 503 applied [1]", code, out)
	}
	_, _, m := call(t, "http://"+a.addr, "GET", "/metrics", "", nil)
	if !strings.Contains(m, `requests_total{route="/api/v1/ingest",method="POST",status="503"} 1`) {
		t.Fatalf("setup: the 503 is not in requests_total:\n%s", grepLines(m, "requests_total"))
	}
	counted := false
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "rejections_total{") && !strings.HasSuffix(l, " 0") {
			counted = true
		}
	}
	if !counted {
		t.Fatalf("a 503 answered in part is in no rejections_total series:\n%s", grepLines(m, "rejections"))
	}
}

// TestReviewOHandoffNeedsCredentialUnderIngestTokens: with INGEST_TOKENS
// set and CLUSTER_TOKEN unset, authorize lets every accessCluster route
// through (the switch has no case for it), so POST /internal/v1/handoff
// needs no credential at all. Any client that can reach the port can name
// itself a member in X-Aiload-Forwarded and take a device: the answer is
// the device's whole state (the windows GET /api/v1/devices/{d} guards
// with INGEST_TOKENS), and the device is tombstoned here, its samples and
// reads sent on to the address the client chose.
//
// Reproduced with two members sharing INGEST_TOKENS only: a device on
// member a is asked for by an unauthenticated POST naming a bogus member.
//
// Correct: 401; the device stays held and readable on a.
func TestReviewOHandoffNeedsCredentialUnderIngestTokens(t *testing.T) {
	c := mustCredentials(t, CredentialOptions{IngestTokens: tokA})
	pods, addrs := reviewOPods(t, [2]*Credentials{c, c}, [2]shard.Options{})
	a := pods[0]
	dev := deviceOwnedBy(addrs[0], addrs)
	if code, out := post(t, a.addr, sample(dev, 1000, `"temp":42`), "Authorization", "Bearer "+tokA); code != 200 {
		t.Fatalf("ingest: %d %s", code, out)
	}
	code, _, body := call(t, "http://"+a.addr, "POST", handoffPath, dev,
		map[string]string{hdrForwarded: "203.0.113.9:80", hdrToken: "1"})
	if code != 401 {
		t.Fatalf("unauthenticated handoff ask: %d, %d bytes of device state; want 401", code, len(body))
	}
	if _, ok, _ := a.set.Device(dev); !ok {
		t.Fatal("an unauthenticated handoff ask took the device away")
	}
}

// TestReviewOTokenFileSameStamp: Credentials.reload re-reads
// INGEST_TOKENS_FILE only when (mtime, size) differs from the last read.
// A rotation to a token of the same length (the usual case: tokens are
// generated at one length) that keeps the mtime — a filesystem with
// coarse timestamps (1 s on some network and FUSE mounts, a kernel tick
// on others) when the rewrite lands in the same tick, or a tool that
// preserves mtimes (cp -p, rsync -t, tar) — is never seen: the revoked
// token stays valid and the new one is refused until some later change.
//
// Reproduced by rewriting the file with a same-length token and setting
// its mtime back to the previous value, then waiting many reload periods.
//
// Correct: the content that is in the file is in force (e.g. compare a
// hash of the content, or the inode/ctime, not mtime and size alone).
func TestReviewOTokenFileSameStamp(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(f, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	creds := mustCredentials(t, CredentialOptions{IngestTokensFile: f, Reload: 10 * time.Millisecond})
	if err := os.WriteFile(f, []byte(tokB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(f, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	ctx := new(fasthttp.RequestCtx)
	ctx.Request.Header.Set("Authorization", "Bearer "+tokB)
	if e := creds.authorize(ctx, accessIngest, false); e != nil {
		t.Fatalf("the token now in the file is refused 30 reload periods later: %s", e.Msg)
	}
	ctx.Request.Header.Set("Authorization", "Bearer "+tokA)
	if e := creds.authorize(ctx, accessIngest, false); e == nil {
		t.Fatal("the token removed from the file is still accepted 30 reload periods later")
	}
}
