package detect

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
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
// Fields a rule leaves out take their values from def. Errors name the rule.
func ParseRules(data []byte, def Params) ([]Rule, error) {
	var f struct {
		Rules []struct {
			Match      *string  `json:"match"`
			Detector   *string  `json:"detector"`
			Window     *int     `json:"window"`
			Threshold  *float64 `json:"threshold"`
			Cooldown   *int     `json:"cooldown"`
			MinSamples *int     `json:"min_samples"`
			MinStddev  *float64 `json:"min_stddev"`
			StepFloor  *float64 `json:"step_floor"`
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
		set(&p.Cooldown, r.Cooldown)
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
