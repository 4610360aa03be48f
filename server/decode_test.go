package server

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"

	"ai-load-service/shard"
)

// encodeBatch writes b back as an ingest body, the inverse of decodeIngest.
func encodeBatch(b *shard.Batch, ts []int64, vals [][]float64) []byte {
	out := []byte{'['}
	for i := range b.Len() {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"device":`...)
		out = appendString(out, b.Device(i))
		out = append(out, `,"ts":`...)
		out = strconv.AppendInt(out, ts[i], 10)
		out = append(out, `,"metrics":{`...)
		for j := range b.SampleMetrics(i) {
			if j > 0 {
				out = append(out, ',')
			}
			out = appendString(out, b.MetricName(i, j))
			out = append(out, ':')
			out = appendFloat(out, vals[i][j])
		}
		out = append(out, "}}"...)
	}
	return append(out, ']')
}

// snapshot returns the devices and metric names of b, in order.
func snapshot(b *shard.Batch) (devs []string, names [][]string) {
	for i := range b.Len() {
		devs = append(devs, string(b.Device(i)))
		var ns []string
		for j := range b.SampleMetrics(i) {
			ns = append(ns, string(b.MetricName(i, j)))
		}
		names = append(names, ns)
	}
	return devs, names
}

// rejected reports whether err rejects the body, failing unless it is a
// client error (*Error, shown to the client as 400).
func rejected(t *testing.T, err error) bool {
	t.Helper()
	if err == nil {
		return false
	}
	if e, ok := err.(*Error); !ok || e.Status != 400 {
		t.Fatalf("decode error is not a 400 *Error: %T %v", err, err)
	}
	return true
}

// sameAsGeneral fails unless the general path alone (no compact fast path)
// gives the same verdict and the same batch, bit for bit.
func sameAsGeneral(t *testing.T, body []byte, err error, b *shard.Batch) {
	t.Helper()
	g := scanner{general: true}
	var gb shard.Batch
	gerr := decodeIngest(&g, body, &gb, 77)
	if (err == nil) != (gerr == nil) || err != nil && err.Error() != gerr.Error() {
		t.Fatalf("fast and general paths disagree on %q: %v vs %v", body, err, gerr)
	}
	if err != nil {
		return
	}
	if b.Len() != gb.Len() || b.Metrics() != gb.Metrics() {
		t.Fatalf("fast and general batches differ in size on %q", body)
	}
	for i := range b.Len() {
		if string(b.Device(i)) != string(gb.Device(i)) || b.TS(i) != gb.TS(i) || b.SampleMetrics(i) != gb.SampleMetrics(i) {
			t.Fatalf("sample %d differs on %q", i, body)
		}
		for j := range b.SampleMetrics(i) {
			if string(b.MetricName(i, j)) != string(gb.MetricName(i, j)) ||
				math.Float64bits(b.Value(i, j)) != math.Float64bits(gb.Value(i, j)) {
				t.Fatalf("sample %d metric %d differs on %q: %v vs %v", i, j, body, b.Value(i, j), gb.Value(i, j))
			}
		}
	}
}

func TestCompactMatchesGeneral(t *testing.T) {
	bodies := []string{
		string(ingestBody(100, 0)),
		`{"device":"a","ts":0,"metrics":{"x":-0,"y":0.5,"z":-12.25}}`,
		`{"device":"a","metrics":{"x":1}}`,
		`{"device":"a","ts":01,"metrics":{"x":1}}`,
		`{"device":"a","ts":1234567890123456789,"metrics":{"x":1}}`,
		`{"device":"a","ts":12345678901234567890,"metrics":{"x":1}}`,
		`{"device":"a","ts":123456789012345678,"metrics":{"x":1}}`,
		`{"device":"a","ts":99999999,"metrics":{"x":1}}`,
		`{"device":"a","ts":1234567/,"metrics":{"x":1}}`,
		`{"device":"a","ts":1234567:,"metrics":{"x":1}}`,
		`{"device":"a","ts":0000000012345,"metrics":{"x":1}}`,
		`{"device":"a","ts":17325600001234567,"metrics":{"x":1}}`,
		`{"device":"a","ts":1732560000123`,
		`{"device":"a","metrics":{"x":1e3,"y":2}}`,
		`{"device":"a","metrics":{"x":1234567890123456,"y":0.1234567890123456}}`,
		`{"device":"a","metrics":{"x":01}}`,
		`{"device":"a","metrics":{"x":1.}}`,
		`{"device":"a","metrics":{"x":1,"x":2}}`,
		`{"device":"a","metrics":{}}`,
		`{"device":"a","metrics":{"x":1}`,
		`{"device":"a","metrics":{"x":1},"extra":true}`,
		`{"device":"","metrics":{"x":1}}`,
		`{"device":"a\u0062","metrics":{"x":1}}`,
		`[{"device":"a","metrics":{"x":1}} , {"device":"b", "metrics":{"x":2}}]`,
		`{"device":"a","metrics":{"x":1e200}}`,
		`{"device":"a","metrics":{"x":-}}`,
	}
	for _, body := range bodies {
		var p scanner
		var b shard.Batch
		err := decodeIngest(&p, []byte(body), &b, 77)
		sameAsGeneral(t, []byte(body), err, &b)
	}
}

// TestEightDigits checks the 8-byte digit test and conversion against a
// byte-wise reference, with every byte value at every position.
func TestEightDigits(t *testing.T) {
	base := []byte("31415926")
	for pos := range 8 {
		for c := range 256 {
			buf := append([]byte(nil), base...)
			buf[pos] = byte(c)
			x := binary.LittleEndian.Uint64(buf)
			want, err := strconv.ParseUint(string(buf), 10, 64)
			isDigits := err == nil && !strings.ContainsAny(string(buf), "+-")
			if got := eightDigits(x); got != isDigits {
				t.Fatalf("eightDigits(%q) = %v; want %v", buf, got, isDigits)
			}
			if isDigits && parseEight(x) != want {
				t.Fatalf("parseEight(%q) = %d; want %d", buf, parseEight(x), want)
			}
		}
	}
	for _, s := range []string{"00000000", "99999999", "00000001", "10000000", "12345678"} {
		want, _ := strconv.ParseUint(s, 10, 64)
		if got := parseEight(binary.LittleEndian.Uint64([]byte(s))); got != want {
			t.Fatalf("parseEight(%q) = %d; want %d", s, got, want)
		}
	}
}

func FuzzDecodeIngest(f *testing.F) {
	f.Add([]byte(`{"device":"sensor-42","ts":1732560000123,"metrics":{"temp":21.5,"hum":40}}`))
	f.Add([]byte(`[{"device":"a","metrics":{"x":1}},{"device":"b.c:d_e-f","ts":0,"metrics":{"y.z":-1e-300}}]`))
	f.Add([]byte(`{"device":"s\u0041","metrics":{"t":1e150},"extra":[1,2,{"a":null}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"device":"d","metrics":{"t":NaN}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var p scanner
		var b shard.Batch
		err := decodeIngest(&p, body, &b, 77)
		sameAsGeneral(t, body, err, &b)
		if rejected(t, err) {
			return
		}
		if b.Len() == 0 {
			t.Fatal("accepted an empty batch")
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON: %q", body)
		}
		devs, names := snapshot(&b)
		for i, d := range devs {
			if !deviceChars.valid([]byte(d), maxDeviceLen) {
				t.Fatalf("accepted bad device %q", d)
			}
			if len(names[i]) == 0 || len(names[i]) > maxMetrics {
				t.Fatalf("accepted %d metrics", len(names[i]))
			}
			for _, n := range names[i] {
				if !metricChars.valid([]byte(n), maxMetricLen) {
					t.Fatalf("accepted bad metric name %q", n)
				}
			}
		}
		// Round trip through a Set: the decoded values must be finite and
		// the re-encoded body must decode to the same devices and names.
		set := shard.New(shard.Options{Shards: 1, WindowSize: 2})
		defer set.Stop()
		if err := set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
		var ts []int64
		var vals [][]float64
		for i, d := range devs {
			ms, ok, _ := set.Device(d)
			if !ok {
				t.Fatalf("device %q not stored", d)
			}
			row := make([]float64, len(names[i]))
			for j, n := range names[i] {
				for _, m := range ms {
					if m.Name == n {
						row[j] = m.Last
						if math.IsNaN(m.Last) || math.IsInf(m.Last, 0) {
							t.Fatalf("stored non-finite value %v", m.Last)
						}
					}
				}
			}
			ts = append(ts, 0)
			vals = append(vals, row)
		}
		again := encodeBatch(&b, ts, vals)
		var b2 shard.Batch
		if err := decodeIngest(&p, again, &b2, 77); err != nil {
			t.Fatalf("re-encoded batch rejected: %v\n%s", err, again)
		}
		devs2, names2 := snapshot(&b2)
		if strings.Join(devs, ",") != strings.Join(devs2, ",") {
			t.Fatalf("devices changed in round trip: %v vs %v", devs, devs2)
		}
		for i := range names {
			if strings.Join(names[i], ",") != strings.Join(names2[i], ",") {
				t.Fatalf("names changed in round trip: %v vs %v", names[i], names2[i])
			}
		}
	})
}

func BenchmarkDecodeIngest1(b *testing.B)   { benchmarkDecodeIngest(b, 1) }
func BenchmarkDecodeIngest100(b *testing.B) { benchmarkDecodeIngest(b, 100) }

func benchmarkDecodeIngest(b *testing.B, n int) {
	body := ingestBody(n, 0)
	var p scanner
	var bt shard.Batch
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for range b.N {
		bt.Reset()
		if err := decodeIngest(&p, body, &bt, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "samples/s")
}

// ingestBody returns a batch of n samples for devices from off on.
func ingestBody(n, off int) []byte {
	var sb strings.Builder
	if n > 1 {
		sb.WriteByte('[')
	}
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"device":"sensor-` + strconv.Itoa(off+i) + `","ts":1732560000123,"metrics":{"temp":21.5,"hum":40.25}}`)
	}
	if n > 1 {
		sb.WriteByte(']')
	}
	return []byte(sb.String())
}

func FuzzDecodeMetric(f *testing.F) {
	f.Add([]byte(`{"rps":123.4,"cpu":55.1,"timestamp":1732560000}`))
	f.Add([]byte(`{"device_id":"edge-1","rps":1,"timestamp":1732560000123,"note":"x"}`))
	f.Add([]byte(`{"rps":1,"rps":2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var s scanner
		var b shard.Batch
		if rejected(t, decodeMetric(&s, body, &b, 77)) {
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON: %q", body)
		}
		if b.Len() != 1 || b.SampleMetrics(0) == 0 || b.SampleMetrics(0) > maxMetrics {
			t.Fatalf("accepted a batch of %d samples, %d metrics", b.Len(), b.Metrics())
		}
		if !deviceChars.valid(b.Device(0), maxDeviceLen) {
			t.Fatalf("accepted bad device %q", b.Device(0))
		}
	})
}

// TestScannerGrammar checks the strict JSON reader on the corners of RFC
// 8259, comparing its verdict with encoding/json's where the body is only
// about syntax (the sample itself is valid).
func TestScannerGrammar(t *testing.T) {
	f := func(extra string, wantOK bool) {
		t.Helper()
		body := `{"device":"d","metrics":{"t":1},"x":` + extra + `}`
		var s scanner
		var b shard.Batch
		err := decodeIngest(&s, []byte(body), &b, 0)
		if (err == nil) != wantOK {
			t.Fatalf("%s: got err %v; want ok=%v", extra, err, wantOK)
		}
		if json.Valid([]byte(body)) != wantOK {
			t.Fatalf("%s: test case disagrees with encoding/json", extra)
		}
	}
	// Valid values in an ignored field.
	f(`null`, true)
	f(`true`, true)
	f(`false`, true)
	f(`-0`, true)
	f(`0.5e-3`, true)
	f(`1E+2`, true)
	f(`"\ud83d\ude00 \u00e9 \n \/"`, true)
	f(`[1,[2,{"a":[]}],{}]`, true)
	f(" \t\r\n[ 1 , 2 ] ", true) // all four kinds of JSON whitespace
	f("\f1", false)              // form feed is not JSON whitespace
	f(`{"a":{"b":{"c":[null]}}}`, true)
	// Invalid ones.
	f(`01`, false)
	f(`1.`, false)
	f(`.5`, false)
	f(`+1`, false)
	f(`1e`, false)
	f(`[1,]`, false)
	f(`{"a":1,}`, false)
	f(`'a'`, false)
	f(`"abc`, false)
	f("\"a\x01b\"", false)
	f(`"\x"`, false)
	f(`"\u12"`, false)
	f(`tru`, false)
	f(`nul`, false)
	f(`NaN`, false)
	f(`Infinity`, false)
	f(`{1:2}`, false)
	f(`[1 2]`, false)
}

func TestScannerDecodes(t *testing.T) {
	f := func(body string, wantDev string, wantTS int64, wantNames ...string) {
		t.Helper()
		var s scanner
		var b shard.Batch
		if err := decodeIngest(&s, []byte(body), &b, 99); err != nil {
			t.Fatalf("%s: unexpected error %v", body, err)
		}
		devs, names := snapshot(&b)
		if len(devs) != 1 || devs[0] != wantDev || strings.Join(names[0], ",") != strings.Join(wantNames, ",") {
			t.Fatalf("%s: got %v %v; want %s %v", body, devs, names, wantDev, wantNames)
		}
	}
	f(`{"device":"sensor-42","ts":1732560000123,"metrics":{"temp":21.5,"hum":40}}`, "sensor-42", 1732560000123, "temp", "hum")
	f(`{"metrics":{"temp":1},"device":"late"}`, "late", 99, "temp")
	f(`{"device":"s\u0041:\u002e","metrics":{"t\u0065mp":1}}`, "sA:.", 99, "temp")
	f(" \n{ \"device\" : \"d\" , \"metrics\" : { \"a\" : -1e-3 } } \n", "d", 99, "a")
	depth := strings.Repeat("[", maxDepth+2) + strings.Repeat("]", maxDepth+2)
	var s scanner
	var b shard.Batch
	err := decodeIngest(&s, []byte(`{"device":"d","metrics":{"t":1},"x":`+depth+`}`), &b, 0)
	if err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("unexpected error for deep nesting: %v", err)
	}
}

func TestParseFloat(t *testing.T) {
	for _, in := range []string{"0", "-0", "1", "21.5", "0.1", "123456789012345", "1234567890123456789", "0.000000000000000000000001",
		"1e10", "-2.5E-3", "1.7976931348623157e308", "4.9e-324", "1e-400", "3.141592653589793238", "9007199254740993"} {
		got, ok := parseFloat([]byte(in))
		want, err := strconv.ParseFloat(in, 64)
		if !ok || err != nil || got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("parseFloat(%q): got %v %v; want %v %v", in, got, ok, want, err)
		}
	}
	if f, ok := parseFloat([]byte("1e999")); !ok || !math.IsInf(f, 1) {
		t.Fatalf("overflow: got %v %v; want +Inf", f, ok)
	}
}
