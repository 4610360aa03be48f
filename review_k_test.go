package main

import (
	"io"
	"testing"

	"github.com/rs/zerolog"
)

// TestReviewKAddrServiceNamePort: ADDR's help says its port may be "a
// number or a service name", and SELF_ADDR may be the pod IP alone, its
// port then "PEER_PORT or ADDR's". With ADDR=:http-alt (8080/tcp in
// /etc/services) the completion copies the name verbatim
// (main.go:184-188, and main.go:177-179 for PEER_PORT), and membership's
// parseAddr / the DNS port check demand a number: the process refuses to
// start with a configuration its own help documents as valid.
func TestReviewKAddrServiceNamePort(t *testing.T) {
	for _, env := range []map[string]string{
		{"ADDR": ":http-alt", "SELF_ADDR": "10.0.0.5", "PEERS": "10.0.0.5:8080"},
		{"ADDR": ":http-alt", "SELF_ADDR": "10.0.0.5", "PEERS_DNS": "ai-load-service-peers"},
	} {
		c, err := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Errorf("env %v: parseConfig: %v", env, err)
			continue
		}
		if c.SelfAddr != "10.0.0.5:8080" {
			t.Errorf("env %v: SELF_ADDR completed to %q; want 10.0.0.5:8080", env, c.SelfAddr)
		}
		if _, err := c.membership(zerolog.Nop(), nil, nil); err != nil {
			t.Errorf("env %v: %v", env, err)
		}
	}
}
