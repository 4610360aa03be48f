package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// startCluster starts n pods that find each other through a peers file.
func startCluster(t *testing.T, bin string, n int, env ...string) ([]*service, string) {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	file := filepath.Join(t.TempDir(), "peers")
	if err := os.WriteFile(file, []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pods := make([]*service, n)
	for i, a := range addrs {
		pods[i] = startServiceAt(t, bin, a, append([]string{"PEERS_FILE=" + file, "SELF_ADDR=" + a, "PEERS_REFRESH=200ms"}, env...)...)
	}
	return pods, file
}

// clusterBatch is one request of n samples over devices, values drawn
// from rng, spikes now and then, every ts explicit.
func clusterBatch(rng *rand.Rand, devices, n int, ts int64) string {
	parts := make([]string, n)
	for i := range parts {
		d := rng.IntN(devices)
		v := float64(d%13) + rng.NormFloat64()
		if rng.IntN(40) == 0 {
			v += 50
		}
		parts[i] = fmt.Sprintf(`{"device":"dev-%d","ts":%d,"metrics":{"temp":%g,"hum":%g}}`, d, ts+int64(i), v, 40+rng.Float64())
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TestClusterMatchesReference: three pods (PEERS_FILE) and a stand-alone
// reference get the same stream, each batch sent to a random pod. Every
// device read from any pod equals the reference exactly (state and alert
// history), and each device is held by exactly one pod.
func TestClusterMatchesReference(t *testing.T) {
	bin := buildService(t)
	pods, _ := startCluster(t, bin, 3)
	ref := startService(t, bin)
	const devices = 60
	rng := rand.New(rand.NewPCG(11, 12))
	for round := range 40 {
		body := clusterBatch(rng, devices, 25, int64(1_000_000+round*100))
		pods[rng.IntN(len(pods))].post(t, body)
		ref.post(t, body)
	}
	for d := range devices {
		for _, path := range []string{"/api/v1/devices/dev-%d", "/api/v1/devices/dev-%d/anomalies"} {
			p := fmt.Sprintf(path, d)
			want := ref.get(t, p)
			for i, pod := range pods {
				if got := pod.get(t, p); got != want {
					t.Fatalf("%s from pod %d:\n got %s\nwant %s", p, i, got, want)
				}
			}
		}
	}
	held, members := 0, 0
	for _, pod := range pods {
		var info struct {
			Devices int
			Members []string
			InView  bool `json:"in_view"`
		}
		resp, err := http.Get(pod.base + "/api/v1/cluster")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil || !info.InView {
			t.Fatalf("cluster info %+v, %v", info, err)
		}
		held += info.Devices
		members = len(info.Members)
	}
	if want := ref.devicesHeld(t); held != want || members != 3 {
		t.Fatalf("pods hold %d devices in all (%d members); want each of the %d held once", held, members, want)
	}
}
