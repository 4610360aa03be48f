package detect

import (
	"strings"
	"testing"
)

func TestParseRules(t *testing.T) {
	def := Params{Kind: Winsor, Window: 50, MinSamples: 10, Threshold: 3, MinStddev: 1e-9, Cooldown: 10}
	f := func(config string, wantErr string, check func([]Rule) bool) {
		t.Helper()
		rules, err := ParseRules([]byte(config), def)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("%s: unexpected error; got %v; want %q", config, err, wantErr)
			}
			return
		}
		if err != nil || !check(rules) {
			t.Fatalf("%s: unexpected result %+v, %v", config, rules, err)
		}
	}
	f(`{"rules":[]}`, "", func(r []Rule) bool { return len(r) == 0 })
	f(`{"rules":[{"match":"temp*","detector":"zscore","window":20,"min_samples":5,"threshold":2.5,"cooldown":0,"min_stddev":0.1}]}`, "",
		func(r []Rule) bool {
			return r[0].Params == Params{Kind: ZScore, Window: 20, MinSamples: 5, Threshold: 2.5, MinStddev: 0.1, Cooldown: 0}
		})
	f(`{"rules":[{"match":"a"}]}`, "", func(r []Rule) bool { return r[0].Params == def })
	f(`{"rules":[{"match":"a"},{"match":"b","detector":"median"}]}`, `rule 2 (match "b"): unknown detector "median"`, nil)
	f(`{"rules":[{"detector":"ewma"}]}`, `rule 1 (match "<missing>"): "match" is required`, nil)
	f(`{"rules":[{"match":"[a-"}]}`, `rule 1 (match "[a-"): bad pattern`, nil)
	f(`{"rules":[{"match":"a","window":5}]}`, `min_samples=10: want 1 to window=5`, nil)
	f(`{"rules":[{"match":"a","threshold":0}]}`, `threshold=0`, nil)
	f(`{"rules":[{"match":"a","cooldown":-2}]}`, `cooldown=-2`, nil)
	f(`{"rules":[{"match":"a","cooldown":"10m"}]}`, "", func(r []Rule) bool { return r[0].Params.CooldownMs == 600000 && r[0].Params.Cooldown == 0 })
	f(`{"rules":[{"match":"a","cooldown":7}]}`, "", func(r []Rule) bool { return r[0].Params.CooldownMs == 0 && r[0].Params.Cooldown == 7 })
	f(`{"rules":[{"match":"a","cooldown":"10 minutes"}]}`, `cooldown="10 minutes": want a count of samples`, nil)
	f(`{"rules":[{"match":"a","cooldown":"0.5ms"}]}`, `cooldown="0.5ms"`, nil)
	f(`{"rules":[{"match":"a","cooldown":1.5}]}`, `cooldown="1.5"`, nil)
	f(`{"rules":[{"match":"a","cooldown":null}]}`, "", func(r []Rule) bool { return r[0].Params == def }) // null: the default
	f(`{"rules":[{"match":"a","step_floor":-1}]}`, `step_floor=-1`, nil)
	f(`{"rules":[{"match":"a","step_floor":2}]}`, "", func(r []Rule) bool { return r[0].Params.StepFloor == 2 })
	f(`{"rules":[{"match":"a","windw":5}]}`, `unknown field "windw"`, nil)
	f(`not json`, "cannot parse detector config", nil)
}

func TestCooldownAndEscalation(t *testing.T) {
	p := Params{Kind: ZScore, Window: 20, MinSamples: 5, Threshold: 3, MinStddev: 1e-9, Cooldown: 5}
	st := NewStream(p.Window)
	for i := range 10 {
		st.Observe(float64(i%2), 0, &p) // 0,1,0,1...: mean 0.5, stddev 0.5
	}
	type step struct {
		x                float64
		anomalous, alert bool
	}
	steps := []step{
		{10, true, true},   // first alert
		{0, false, false},  // quiet 4 left
		{20, true, false},  // anomalous, held back (|z| not 2x the alert's)
		{1000, true, true}, // escalates past 2x: alerts through the cooldown
		{0, false, false},  // cooldown restarts from the escalated alert
		{0, false, false},  //
		{0, false, false},  //
		{0, false, false},  //
		{0, false, false},  // cooldown over
		{1e6, true, true},  // alerts again
	}
	for i, s := range steps {
		sc := st.Observe(s.x, 0, &p)
		if sc.Anomalous != s.anomalous || sc.Alert != s.alert {
			t.Fatalf("step %d (x=%g z=%g): got anomalous=%v alert=%v; want %v %v", i, s.x, sc.Z, sc.Anomalous, sc.Alert, s.anomalous, s.alert)
		}
	}
	if st.Anomalies != 3 || st.Anomalous != 4 {
		t.Fatalf("unexpected counts; got alerts=%d anomalous=%d; want 3 and 4", st.Anomalies, st.Anomalous)
	}
}
