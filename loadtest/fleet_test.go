package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
)

// TestFleetSpikesOnlyWarmDevices runs fleet.js under node with stand-ins
// for k6 (testdata/fleet_sim.mjs: a module instance per VU, a service that
// counts each device's accepted samples and rejects 1%). Every spike must
// reach a device with at least MIN_SAMPLES accepted samples, also when
// there are more VUs than device slices or fewer devices than VUs, and
// every device must still get traffic.
func TestFleetSpikesOnlyWarmDevices(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: make test installs it (Debian package nodejs)")
	}
	// Opened here so that go test's cache sees when they change.
	for _, f := range []string{"fleet.js", "testdata/fleet_sim.mjs"} {
		if _, err := os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name            string
		vus, iterations int
		env             []string
		devices, min    int
	}{
		// RATE=500 preallocates 10 VUs, so 10 slices.
		{"13 VUs on 10 slices", 13, 20000, []string{"RATE=500", "DEVICES=300", "SPIKE_RATE=0.05"}, 300, 20},
		{"fewer devices than VUs", 10, 3000, []string{"RATE=500", "DEVICES=7", "SPIKE_RATE=0.05", "MIN_SAMPLES=5"}, 7, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"testdata/fleet_sim.mjs", "fleet.js", strconv.Itoa(c.vus), strconv.Itoa(c.iterations)}, c.env...)
			out, err := exec.Command(node, args...).Output()
			if err != nil {
				t.Fatalf("node %v: %v", args, err)
			}
			var r struct {
				Requests, Devices int
				Spikes            []int // the device's accepted samples when each spike arrived
			}
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("%v in %s", err, out)
			}
			if r.Requests != c.iterations || r.Devices != c.devices {
				t.Fatalf("%d requests to %d devices; want %d to %d", r.Requests, r.Devices, c.iterations, c.devices)
			}
			if len(r.Spikes) == 0 {
				t.Fatal("no spikes injected")
			}
			if m := slices.Min(r.Spikes); m < c.min {
				cold := 0
				for _, n := range r.Spikes {
					if n < c.min {
						cold++
					}
				}
				t.Fatalf("%d of %d spikes reached devices with fewer than %d samples (fewest: %d)", cold, len(r.Spikes), c.min, m)
			}
		})
	}
}
