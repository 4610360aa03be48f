package detect

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"time"
)

// Rule gives the metrics whose names match Match (a path.Match pattern,
// e.g. "temp*") their own detector settings.
type Rule struct {
	Match  string
	Params Params
}

// ParseRules reads a DETECTOR_CONFIG file:
//
//	{"rules": [{"match": "temp*", "detector": "ewma", "window": 100,
//	            "threshold": 4, "cooldown": 20, "min_samples": 20, "min_stddev": 0.01,
//	            "step_floor": 0.5}]}
//
// Fields a rule leaves out take their values from def; "cooldown" is a
// count of samples or a duration ("10m"). Errors name the rule.
func ParseRules(data []byte, def Params) ([]Rule, error) {
	var f struct {
		Rules []struct {
			Match      *string         `json:"match"`
			Detector   *string         `json:"detector"`
			Window     *int            `json:"window"`
			Threshold  *float64        `json:"threshold"`
			Cooldown   json.RawMessage `json:"cooldown"`
			MinSamples *int            `json:"min_samples"`
			MinStddev  *float64        `json:"min_stddev"`
			StepFloor  *float64        `json:"step_floor"`
		} `json:"rules"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf(`cannot parse detector config: %w; want {"rules": [{"match": "temp*", "detector": "ewma", ...}]}`, err)
	}
	rules := make([]Rule, 0, len(f.Rules))
	for i, r := range f.Rules {
		fail := func(format string, args ...any) error {
			name := "<missing>"
			if r.Match != nil {
				name = *r.Match
			}
			return fmt.Errorf("detector config rule %d (match %q): %s", i+1, name, fmt.Sprintf(format, args...))
		}
		if r.Match == nil || *r.Match == "" {
			return nil, fail(`"match" is required: a metric name pattern such as "temp*"`)
		}
		if _, err := path.Match(*r.Match, ""); err != nil {
			return nil, fail("bad pattern: %v", err)
		}
		p := def
		if r.Detector != nil {
			k, err := ParseKind(*r.Detector)
			if err != nil {
				return nil, fail("%v", err)
			}
			p.Kind = k
		}
		set := func(dst *int, src *int) {
			if src != nil {
				*dst = *src
			}
		}
		set(&p.Window, r.Window)
		if r.Cooldown != nil && string(r.Cooldown) != "null" { // null: the default, as for every field
			var s string
			if err := json.Unmarshal(r.Cooldown, &s); err != nil {
				s = string(r.Cooldown) // a number
			}
			n, ms, err := ParseCooldown(s)
			if err != nil {
				return nil, fail("%v", err)
			}
			p.Cooldown, p.CooldownMs = n, ms
		}
		set(&p.MinSamples, r.MinSamples)
		if r.Threshold != nil {
			p.Threshold = *r.Threshold
		}
		if r.MinStddev != nil {
			p.MinStddev = *r.MinStddev
		}
		if r.StepFloor != nil {
			p.StepFloor = *r.StepFloor
		}
		if err := p.Validate(); err != nil {
			return nil, fail("%v", err)
		}
		rules = append(rules, Rule{Match: *r.Match, Params: p})
	}
	return rules, nil
}

// ParseCooldown reads an ALERT_COOLDOWN: a count of samples ("50"), or a
// duration of the samples' ts ("10m", whole milliseconds, at most a year)
// returned in ms.
func ParseCooldown(s string) (samples int, ms int64, err error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 1000000 {
			return 0, 0, fmt.Errorf("cooldown=%d: want 0 to 1000000 samples", n)
		}
		return n, 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond || d > MaxCooldownMs*time.Millisecond || d%time.Millisecond != 0 {
		return 0, 0, fmt.Errorf("cooldown=%q: want a count of samples (0 to 1000000) or a duration like 10m (1ms to a year, whole milliseconds)", s)
	}
	return 0, d.Milliseconds(), nil
}
