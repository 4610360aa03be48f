package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

const (
	clientToken  = "client-token-0123456789"
	clusterToken = "cluster-token-0123456789"
)

// authDo sends a request bearing tok ("" for none) and returns the status
// and body.
func authDo(t *testing.T, method, url, body, tok string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestClusterTokens: pods with INGEST_TOKENS forward samples and reads to
// each other with CLUSTER_TOKEN (which cluster mode then requires: the
// handoff routes must not be open), and a joining pod pulls its devices
// (handoff asks) under the token:
// every device read from any pod equals a reference fed the same batches.
// Without a token a client gets 401 from every pod and nothing is stored.
func TestClusterTokens(t *testing.T) {
	bin := buildService(t)
	for _, c := range []struct {
		name    string
		env     []string
		guarded bool // INGEST_TOKENS set
	}{
		{"cluster token", []string{"INGEST_TOKENS=" + clientToken, "CLUSTER_TOKEN=" + clusterToken}, true},
		{"cluster token, open ingest", []string{"CLUSTER_TOKEN=" + clusterToken}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pods, file := startCluster(t, bin, 2, c.env...)
			ref := startService(t, bin)
			const devices = 40
			rng := rand.New(rand.NewPCG(21, 22))
			send := func(rounds, base int) {
				for round := range rounds {
					body := clusterBatch(rng, devices, 20, int64(base+round*100))
					if code, b := authDo(t, "POST", pods[rng.IntN(len(pods))].base+"/api/v1/ingest", body, clientToken); code != 200 {
						t.Fatalf("ingest: %d %s", code, b)
					}
					ref.post(t, body)
				}
			}
			send(20, 1_000_000)
			// A third pod joins: the devices it now owns move to it by
			// handoff asks, which the other pods answer only with the token.
			a := freeAddrFor(t, pods)
			writePeers(t, file, []string{pods[0].addr(), pods[1].addr(), a})
			third := startServiceAt(t, bin, a, append([]string{"PEERS_FILE=" + file, "SELF_ADDR=" + a, "PEERS_REFRESH=200ms"}, c.env...)...)
			pods = append(pods, third)
			for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				ok := true
				for _, p := range pods {
					_, b := authDo(t, "GET", p.base+"/api/v1/cluster", "", clientToken)
					var info struct{ Members []string }
					ok = ok && json.Unmarshal([]byte(b), &info) == nil && len(info.Members) == 3
				}
				if ok {
					break
				}
				if time.Now().After(end) {
					t.Fatal("the third pod did not join every view")
				}
			}
			send(20, 2_000_000)
			for d := range devices {
				for _, path := range []string{"/api/v1/devices/dev-%d", "/api/v1/devices/dev-%d/anomalies"} {
					p := fmt.Sprintf(path, d)
					want := ref.get(t, p)
					for i, pod := range pods {
						code, got := authDo(t, "GET", pod.base+p, "", clientToken)
						if g := fmt.Sprintf("%d %s", code, got); g != want {
							t.Fatalf("%s from pod %d:\n got %s\nwant %s", p, i, g, want)
						}
					}
				}
			}
			for _, pod := range pods {
				if !c.guarded {
					break
				}
				if code, b := authDo(t, "POST", pod.base+"/api/v1/ingest", `{"device":"intruder","metrics":{"t":1}}`, ""); code != 401 {
					t.Fatalf("ingest without a token: %d %s", code, b)
				}
				if code, _ := authDo(t, "GET", pod.base+"/api/v1/devices/intruder", "", clientToken); code != 404 {
					t.Fatalf("a refused sample was stored (%d)", code)
				}
			}
		})
	}
}

// freeAddrFor is a free loopback address not among pods'.
func freeAddrFor(t *testing.T, pods []*service) string {
	t.Helper()
	for {
		a := freeAddr(t)
		taken := false
		for _, p := range pods {
			taken = taken || p.addr() == a
		}
		if !taken {
			return a
		}
	}
}

// TestClusterTokenMismatch: pods whose CLUSTER_TOKENs differ (a rotation
// half done) refuse each other's forwarded parts; the client, whose token
// was good, gets a 503 naming the cause and the samples applied, not a 401.
func TestClusterTokenMismatch(t *testing.T) {
	bin := buildService(t)
	a, b := freeAddr(t), freeAddr(t)
	file := t.TempDir() + "/peers"
	writePeers(t, file, []string{a, b})
	pa := startServiceAt(t, bin, a, "PEERS_FILE="+file, "SELF_ADDR="+a, "INGEST_TOKENS="+clientToken, "CLUSTER_TOKEN="+clusterToken)
	startServiceAt(t, bin, b, "PEERS_FILE="+file, "SELF_ADDR="+b, "INGEST_TOKENS="+clientToken, "CLUSTER_TOKEN="+clusterToken+"-new")
	rng := rand.New(rand.NewPCG(5, 6))
	code, body := authDo(t, "POST", pa.base+"/api/v1/ingest", clusterBatch(rng, 40, 40, 1000), clientToken)
	if code != 503 || !strings.Contains(body, "CLUSTER_TOKEN") || !strings.Contains(body, `"applied"`) {
		t.Fatalf("a batch spanning both pods: %d %s; want 503 naming CLUSTER_TOKEN, with the samples applied", code, body)
	}
}
