package server

import (
	"encoding/binary"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// Limits of the wire format.
const (
	maxDeviceLen  = 128
	maxMetricLen  = 64
	maxMetrics    = 64
	maxAbsValue   = 1e150 // squares of differences stay far from overflow
	maxDepth      = 64    // nesting allowed inside ignored fields
	defaultDevice = "default"
)

var (
	deviceChars = charset("A-Za-z0-9._:-")
	metricChars = charset("A-Za-z0-9_.:-")
)

type charTable [256]bool

func charset(spec string) *charTable {
	var t charTable
	for i := 0; i < len(spec); i++ {
		if i+2 < len(spec) && spec[i+1] == '-' {
			for c := spec[i]; c <= spec[i+2]; c++ {
				t[c] = true
			}
			i += 2
			continue
		}
		t[spec[i]] = true
	}
	return &t
}

func (t *charTable) valid(b []byte, maxLen int) bool {
	if len(b) == 0 || len(b) > maxLen {
		return false
	}
	for _, c := range b {
		if !t[c] {
			return false
		}
	}
	return true
}

func badRequest(format string, args ...any) *Error {
	return errorf(fasthttp.StatusBadRequest, format, args...)
}

// decodeIngest parses an ingest body, one sample object or an array of
// them, into b. now is the receive time in unix ms for samples without ts.
// On error b holds a partial batch that must not be ingested.
func decodeIngest(s *scanner, body []byte, b *shard.Batch, now int64) error {
	return asError(s.ingest(body, b, now))
}

// decodeMetric parses the prototype's body: {"rps":1,"cpu":2,"timestamp":
// 1732560000[, "device_id": "x"]}. Every other numeric field is a metric.
func decodeMetric(s *scanner, body []byte, b *shard.Batch, now int64) error {
	return asError(s.metric(body, b, now))
}

// scanner is a strict, single-pass JSON reader that decodes the two wire
// formats straight into a shard.Batch: no tree, no allocation once its
// buffers have grown. It follows RFC 8259 (no NaN, no trailing commas, no
// leading zeros), and nesting inside ignored fields is limited to maxDepth.
type scanner struct {
	buf     []byte
	pos     int
	general bool   // skip the compact fast path (tests compare both)
	tmp     []byte // the last unescaped string; valid until the next one
	dev     []byte // the current sample's device, copied out of tmp
	// maxBatch bounds an array's samples; zero: no bound.
	maxBatch int
}

func (s *scanner) ingest(body []byte, b *shard.Batch, now int64) *Error {
	s.buf, s.pos = body, 0
	s.ws()
	switch s.peek() {
	case '{':
		if e := s.sample(b, now, -1); e != nil {
			return e
		}
	case '[':
		n := 0
		if e := s.array(func(i int) *Error {
			if n++; s.maxBatch > 0 && n > s.maxBatch {
				e := errorf(fasthttp.StatusRequestEntityTooLarge,
					"batch of more than %d samples; split it, or raise MAX_BATCH (now %d); nothing from this request was applied", s.maxBatch, s.maxBatch)
				e.Reason = "batch_too_large"
				return e
			}
			return s.sample(b, now, i)
		}); e != nil {
			return e
		}
		if n == 0 {
			return badRequest("empty batch: send one sample object or a non-empty array of them")
		}
	default:
		if s.pos == len(s.buf) {
			return s.syntax("a JSON value")
		}
		return badRequest("body must be a sample object or an array of them; got %s", s.kind())
	}
	return s.end()
}

// end checks that only whitespace follows the top-level value.
func (s *scanner) end() *Error {
	s.ws()
	if s.pos != len(s.buf) {
		return s.syntax("end of input")
	}
	return nil
}

func (s *scanner) sample(b *shard.Batch, now int64, idx int) *Error {
	if !s.general && s.compact(b, now) {
		return nil
	}
	if s.peek() != '{' {
		if !s.isValueStart() {
			return at(s.syntax("a sample object"), idx)
		}
		return at(badRequest("sample must be a JSON object; got %s", s.kind()), idx)
	}
	b.Begin()
	i := b.Len() - 1
	ts := now
	var seen uint8
	const seenDevice, seenTS, seenMetrics = 1, 2, 4
	e := s.object(func(key []byte) *Error {
		var bit uint8
		switch string(key) {
		case "device":
			bit = seenDevice
		case "ts":
			bit = seenTS
		case "metrics":
			bit = seenMetrics
		default:
			return s.skip(0) // unknown fields are ignored for forward compatibility
		}
		if seen&bit != 0 {
			return badRequest("duplicate field %q", key)
		}
		seen |= bit
		switch bit {
		case seenDevice:
			return s.device(`"device"`)
		case seenTS:
			var ok bool
			if ts, ok = s.uint(); !ok {
				return badRequest(`"ts" must be a non-negative integer of unix milliseconds`)
			}
			return nil
		default:
			return s.metrics(b, i)
		}
	})
	if e != nil {
		return at(e, idx)
	}
	if seen&seenDevice == 0 {
		return at(badRequest(`missing "device"`), idx)
	}
	if seen&seenMetrics == 0 {
		return at(badRequest(`missing "metrics"`), idx)
	}
	b.SetSample(s.dev, ts)
	return nil
}

// compact decodes a sample written the way clients usually write it,
// {"device":"id","ts":123,"metrics":{"name":1.5,...}} with no whitespace,
// escapes or exponents, about twice as fast as the general path. Anything
// else, including every error, rewinds and leaves the sample to the general
// path, so both accept and reject exactly the same bodies.
func (s *scanner) compact(b *shard.Batch, now int64) bool {
	start, mark := s.pos, b.Mark()
	if s.compactSample(b, now) {
		return true
	}
	s.pos = start
	b.Rewind(mark)
	return false
}

func (s *scanner) compactSample(b *shard.Batch, now int64) bool {
	buf, p := s.buf, s.pos
	if !hasAt(buf, p, `{"device":"`) {
		return false
	}
	p += len(`{"device":"`)
	q := p
	for p < len(buf) && deviceChars[buf[p]] {
		p++
	}
	id := buf[q:p]
	if len(id) == 0 || len(id) > maxDeviceLen || p == len(buf) || buf[p] != '"' {
		return false
	}
	p++
	ts := now
	if hasAt(buf, p, `,"ts":`) {
		p += len(`,"ts":`)
		q = p
		ts = 0
		// Eight digits at a time while they fit in the 18 allowed: a
		// millisecond timestamp has 13, which one by one are a chain of
		// dependent multiplications.
		for len(buf)-p >= 8 && p-q <= 10 {
			x := binary.LittleEndian.Uint64(buf[p:])
			if !eightDigits(x) {
				break
			}
			ts = ts*1e8 + int64(parseEight(x))
			p += 8
		}
		for p < len(buf) && buf[p]-'0' < 10 && p-q < 18 {
			ts = ts*10 + int64(buf[p]-'0')
			p++
		}
		if p == q || buf[q] == '0' && p-q > 1 {
			return false
		}
	}
	if !hasAt(buf, p, `,"metrics":{`) {
		return false
	}
	p += len(`,"metrics":{`)
	b.Begin()
	i := b.Len() - 1
	for n := 0; ; n++ {
		if n == maxMetrics || p == len(buf) || buf[p] != '"' {
			return false
		}
		p++
		q = p
		for p < len(buf) && metricChars[buf[p]] {
			p++
		}
		name := buf[q:p]
		if len(name) == 0 || len(name) > maxMetricLen || !hasAt(buf, p, `":`) {
			return false
		}
		f, np, ok := compactNumber(buf, p+2)
		if !ok || math.Abs(f) > maxAbsValue {
			return false
		}
		p = np
		for j := range b.SampleMetrics(i) {
			if string(b.MetricName(i, j)) == string(name) {
				return false
			}
		}
		b.AddMetric(name, f)
		if p < len(buf) && buf[p] == ',' {
			p++
			continue
		}
		if !hasAt(buf, p, "}}") {
			return false
		}
		b.SetSample(id, ts)
		s.pos = p + 2
		return true
	}
}

// eightDigits reports whether the 8 bytes in x (little-endian) are all
// ASCII digits; parseEight converts them. Both are simdjson's
// (is_made_of_eight_digits_fast, parse_eight_digits_unrolled).
func eightDigits(x uint64) bool {
	return (x&0xF0F0F0F0F0F0F0F0)|(((x+0x0606060606060606)&0xF0F0F0F0F0F0F0F0)>>4) == 0x3333333333333333
}

func parseEight(x uint64) uint64 {
	const mask = 0x000000FF000000FF
	x -= 0x3030303030303030
	x = x*10 + x>>8
	return ((x&mask)*(100+1000000<<32) + (x>>16&mask)*(1+10000<<32)) >> 32
}

func hasAt(buf []byte, p int, lit string) bool {
	return len(buf)-p >= len(lit) && string(buf[p:p+len(lit)]) == lit
}

// compactNumber reads -?(0|[1-9][0-9]*)(\.[0-9]+)? with at most 15 digits,
// converted exactly as parseFloat does, and returns the position after it.
func compactNumber(buf []byte, p int) (float64, int, bool) {
	neg := p < len(buf) && buf[p] == '-'
	if neg {
		p++
	}
	q := p
	var mant uint64
	for p < len(buf) && buf[p]-'0' < 10 {
		mant = mant*10 + uint64(buf[p]-'0')
		p++
	}
	nd := p - q
	if nd == 0 || buf[q] == '0' && nd > 1 {
		return 0, p, false
	}
	frac := 0
	if p < len(buf) && buf[p] == '.' {
		p++
		q = p
		for p < len(buf) && buf[p]-'0' < 10 {
			mant = mant*10 + uint64(buf[p]-'0')
			p++
		}
		frac = p - q
		if frac == 0 {
			return 0, p, false
		}
	}
	if nd+frac > 15 || p < len(buf) && (buf[p] == 'e' || buf[p] == 'E') {
		return 0, p, false
	}
	f := float64(mant) / pow10[frac]
	if neg {
		f = -f
	}
	return f, p, true
}

// device reads a device ID string into s.dev.
func (s *scanner) device(field string) *Error {
	bad := func() *Error {
		return badRequest(`%s must be a string of 1-%d characters from A-Z a-z 0-9 . _ : -`, field, maxDeviceLen)
	}
	if s.peek() != '"' {
		if !s.isValueStart() {
			return s.syntax("a JSON value")
		}
		return bad()
	}
	v, e := s.str()
	if e != nil {
		return e
	}
	if !deviceChars.valid(v, maxDeviceLen) {
		return bad()
	}
	s.dev = append(s.dev[:0], v...)
	return nil
}

// metrics reads a {"name": number, ...} object into sample i of b.
func (s *scanner) metrics(b *shard.Batch, i int) *Error {
	if s.peek() != '{' {
		if !s.isValueStart() {
			return s.syntax("a JSON value")
		}
		return badRequest(`"metrics" must be an object of name: number`)
	}
	n := 0
	e := s.object(func(name []byte) *Error {
		n++
		if n > maxMetrics {
			return s.skip(0) // counted for the message below
		}
		return s.metric1(b, i, name)
	})
	if e != nil {
		return e
	}
	if n == 0 || n > maxMetrics {
		return badRequest(`"metrics" must have 1-%d entries; got %d`, maxMetrics, n)
	}
	return nil
}

// metric1 validates a name and reads its value into sample i of b.
func (s *scanner) metric1(b *shard.Batch, i int, name []byte) *Error {
	if !metricChars.valid(name, maxMetricLen) {
		return badRequest("metric name %q must be 1-%d characters from A-Z a-z 0-9 _ . : -", clip(name), maxMetricLen)
	}
	for j := range b.SampleMetrics(i) {
		if string(b.MetricName(i, j)) == string(name) {
			return badRequest("duplicate metric %q", name)
		}
	}
	if !s.isNumberStart() {
		if !s.isValueStart() {
			return s.syntax("a number")
		}
		return badRequest("metric %q must be a number; got %s", name, s.kind())
	}
	raw, e := s.num()
	if e != nil {
		return e
	}
	f, ok := parseFloat(raw)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
		return badRequest("metric %q must be a finite number", name)
	}
	if math.Abs(f) > maxAbsValue {
		return badRequest("metric %q is out of range: |value| must be at most %g", name, maxAbsValue)
	}
	b.AddMetric(name, f)
	return nil
}

func (s *scanner) metric(body []byte, b *shard.Batch, now int64) *Error {
	s.buf, s.pos = body, 0
	s.ws()
	if s.peek() != '{' {
		if !s.isValueStart() {
			return s.syntax("a JSON object")
		}
		return badRequest(`body must be a JSON object like {"rps": 120, "cpu": 55.5}; got %s`, s.kind())
	}
	b.Begin()
	s.dev = append(s.dev[:0], defaultDevice...)
	t := now
	var seenDev, seenTS bool
	n := 0
	e := s.object(func(key []byte) *Error {
		switch string(key) {
		case "device_id":
			if seenDev {
				return badRequest(`duplicate "device_id"`)
			}
			seenDev = true
			return s.device(`"device_id"`)
		case "timestamp":
			if seenTS {
				return badRequest(`duplicate "timestamp"`)
			}
			seenTS = true
			bad := func() *Error {
				return badRequest(`"timestamp" must be unix seconds, or milliseconds when above 1e12`)
			}
			if !s.isNumberStart() {
				return bad()
			}
			raw, e := s.num()
			if e != nil {
				return e
			}
			f, ok := parseFloat(raw)
			if !ok || f < 0 || f > 1e16 {
				return bad()
			}
			if f <= 1e12 {
				f *= 1000
			}
			t = int64(math.Round(f))
			return nil
		}
		if !s.isNumberStart() {
			return s.skip(0) // non-numeric fields are ignored, as the prototype did
		}
		if n++; n > maxMetrics {
			return badRequest("at most %d numeric fields per request", maxMetrics)
		}
		return s.metric1(b, 0, key)
	})
	if e != nil {
		return e
	}
	if e := s.end(); e != nil {
		return e
	}
	if n == 0 {
		return badRequest(`no numeric field: send e.g. {"rps": 120, "cpu": 55.5}`)
	}
	b.SetSample(s.dev, t)
	return nil
}

// object reads the object at pos, calling field for each key with pos at
// its value; field must consume the value. The key is valid until field
// reads another string. (It and array share a shape; folding both into one
// loop over the closing byte cost the decode benchmarks 5-8%.)
func (s *scanner) object(field func(key []byte) *Error) *Error {
	s.pos++ // '{'
	s.ws()
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	for {
		s.ws()
		if s.peek() != '"' {
			return s.syntax("a string key")
		}
		key, e := s.str()
		if e != nil {
			return e
		}
		s.ws()
		if s.peek() != ':' {
			return s.syntax("':'")
		}
		s.pos++
		s.ws()
		if e := field(key); e != nil {
			return e
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return s.syntax("',' or '}'")
		}
	}
}

// array reads the array at pos, calling elem with each element's index and
// pos at the element; elem must consume it. An empty array calls it never.
func (s *scanner) array(elem func(i int) *Error) *Error {
	s.pos++ // '['
	s.ws()
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for i := 0; ; i++ {
		s.ws()
		if e := elem(i); e != nil {
			return e
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.syntax("',' or ']'")
		}
	}
}

// skip validates and passes over any JSON value.
func (s *scanner) skip(depth int) *Error {
	if depth > maxDepth {
		return badRequest("JSON nested deeper than %d levels", maxDepth)
	}
	switch c := s.peek(); {
	case c == '"':
		_, e := s.str()
		return e
	case c == '{':
		return s.object(func([]byte) *Error { return s.skip(depth + 1) })
	case c == '[':
		return s.array(func(int) *Error { return s.skip(depth + 1) })
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case s.isNumberStart():
		_, e := s.num()
		return e
	}
	return s.syntax("a JSON value")
}

func (s *scanner) literal(word string) *Error {
	if len(s.buf)-s.pos < len(word) || string(s.buf[s.pos:s.pos+len(word)]) != word {
		return s.syntax(word)
	}
	s.pos += len(word)
	return nil
}

// str reads the string at pos. Without escapes it returns a slice of the
// body; with escapes, s.tmp holding the decoded bytes.
func (s *scanner) str() ([]byte, *Error) {
	s.pos++ // '"'
	start := s.pos
	for s.pos < len(s.buf) {
		c := s.buf[s.pos]
		if !strStop[c] {
			s.pos++
			continue
		}
		switch {
		case c == '"':
			s.pos++
			return s.buf[start : s.pos-1], nil
		case c == '\\':
			return s.strEscaped(start)
		}
		return nil, s.syntax("no control characters inside a string")
	}
	return nil, s.syntax(`'"' closing the string`)
}

// strStop marks the bytes that end the fast path of str.
var strStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

func (s *scanner) strEscaped(start int) ([]byte, *Error) {
	s.tmp = append(s.tmp[:0], s.buf[start:s.pos]...)
	for s.pos < len(s.buf) {
		c := s.buf[s.pos]
		switch {
		case c == '"':
			s.pos++
			return s.tmp, nil
		case c < 0x20:
			return nil, s.syntax("no control characters inside a string")
		case c != '\\':
			s.tmp = append(s.tmp, c)
			s.pos++
			continue
		}
		if s.pos+1 >= len(s.buf) {
			break
		}
		esc := s.buf[s.pos+1]
		s.pos += 2
		switch esc {
		case '"', '\\', '/':
			s.tmp = append(s.tmp, esc)
		case 'b':
			s.tmp = append(s.tmp, '\b')
		case 'f':
			s.tmp = append(s.tmp, '\f')
		case 'n':
			s.tmp = append(s.tmp, '\n')
		case 'r':
			s.tmp = append(s.tmp, '\r')
		case 't':
			s.tmp = append(s.tmp, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return nil, s.syntax("four hex digits after \\u")
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if s.pos+1 < len(s.buf) && s.buf[s.pos] == '\\' && s.buf[s.pos+1] == 'u' {
					s.pos += 2
					if r2, ok = s.hex4(); !ok {
						return nil, s.syntax("four hex digits after \\u")
					}
				}
				r = utf16.DecodeRune(r, r2) // U+FFFD unless a valid pair
			}
			s.tmp = utf8.AppendRune(s.tmp, r)
		default:
			s.pos--
			return nil, s.syntax(`an escape: \" \\ \/ \b \f \n \r \t or \u`)
		}
	}
	return nil, s.syntax(`'"' closing the string`)
}

func (s *scanner) hex4() (rune, bool) {
	if len(s.buf)-s.pos < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s.buf[s.pos : s.pos+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	s.pos += 4
	return r, true
}

// num reads a number per the JSON grammar and returns its text.
func (s *scanner) num() ([]byte, *Error) {
	start := s.pos
	if s.peek() == '-' {
		s.pos++
	}
	switch c := s.peek(); {
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return nil, s.syntax("a digit")
	}
	if s.peek() == '.' {
		s.pos++
		if s.digits() == 0 {
			return nil, s.syntax("a digit after '.'")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.pos++
		if c := s.peek(); c == '+' || c == '-' {
			s.pos++
		}
		if s.digits() == 0 {
			return nil, s.syntax("a digit in the exponent")
		}
	}
	return s.buf[start:s.pos], nil
}

func (s *scanner) digits() int {
	start := s.pos
	for s.pos < len(s.buf) && s.buf[s.pos]-'0' < 10 {
		s.pos++
	}
	return s.pos - start
}

// uint reads a non-negative integer that fits int64.
func (s *scanner) uint() (int64, bool) {
	if !s.isNumberStart() {
		return 0, false
	}
	raw, e := s.num()
	if e != nil || raw[0] == '-' || len(raw) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range raw {
		if c-'0' >= 10 {
			return 0, false // a fraction or an exponent
		}
		n = n*10 + uint64(c-'0')
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

// pow10 holds the powers of ten that float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// parseFloat converts a number scanned by num. Numbers with at most 15
// significant digits and a small exponent take Clinger's exact fast path
// (both operands exact, so one correctly rounded operation); the rest go to
// strconv. Overflow gives ±Inf.
func parseFloat(raw []byte) (float64, bool) {
	i, neg := 0, false
	if raw[0] == '-' {
		neg, i = true, 1
	}
	var mant uint64
	nd, exp := 0, 0
	for ; i < len(raw) && raw[i]-'0' < 10; i++ {
		mant = mant*10 + uint64(raw[i]-'0')
		nd++
	}
	if i < len(raw) && raw[i] == '.' {
		for i++; i < len(raw) && raw[i]-'0' < 10; i++ {
			mant = mant*10 + uint64(raw[i]-'0')
			nd++
			exp--
		}
	}
	if i == len(raw) && nd <= 15 && exp >= -22 {
		f := float64(mant) / pow10[-exp]
		if neg {
			f = -f
		}
		return f, true
	}
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(raw), len(raw)), 64)
	if err != nil && !math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

func (s *scanner) ws() {
	for s.pos < len(s.buf) {
		switch s.buf[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	if s.pos < len(s.buf) {
		return s.buf[s.pos]
	}
	return 0
}

func (s *scanner) isNumberStart() bool {
	c := s.peek()
	return c == '-' || c-'0' < 10
}

func (s *scanner) isValueStart() bool {
	switch s.peek() {
	case '"', '{', '[', 't', 'f', 'n':
		return true
	}
	return s.isNumberStart()
}

// kind names the type of the value at pos, for error messages.
func (s *scanner) kind() string {
	switch s.peek() {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	if s.isNumberStart() {
		return "number"
	}
	return "invalid JSON"
}

func (s *scanner) syntax(want string) *Error {
	if s.pos >= len(s.buf) {
		return badRequest("invalid JSON: unexpected end of input; expected %s", want)
	}
	return badRequest("invalid JSON at byte %d: expected %s near %q", s.pos, want, clip(s.buf[s.pos:]))
}

// clip shortens a client's string for an error message.
func clip(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
