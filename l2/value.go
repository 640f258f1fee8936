package l2

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A value key holds a header, written by the scripts, then the envelope:
//
//	'T' marker expiry ':' n ':' n × (len(name) ':' name len(stamp) ':' stamp) envelope
//
// marker is '1' for a value, 'n' for a stored "not found" (whose envelope
// is empty); expiry is the instant the value expires, in milliseconds
// since the Unix epoch on the clock of the server that holds it (its TIME
// when the value was written, plus the TTL: never later than Redis's own
// expiry); n is the count of the value's groups, each with the stamp it
// had when the value was written. Lengths and counts are decimal.
//
// The groups and stamps live in the value itself, so that a plain GET of
// a value brings everything needed to trust it, and no eviction can part
// a value from its groups. A value written by an earlier version of this
// package (an envelope without a header, its groups in the Keys.Meta
// list) is still read, through the read script.

// Stored is a value key's content, split.
type Stored struct {
	// Negative reports a stored "not found"; Envelope is then empty.
	Negative bool
	// Expiry is when Redis expires the value, in milliseconds since the
	// Unix epoch on the server's clock; never later than the key's PTTL
	// says.
	Expiry int64
	// Pairs holds the value's groups, each followed by the stamp it had
	// when the value was written: name, stamp, name, stamp...
	Pairs []string
	// Envelope is the stored envelope (see DecodeEnvelope).
	Envelope string
}

// Groups returns the names of the value's groups.
func (v Stored) Groups() []string {
	return v.groupsOr(nil)
}

// groupsOr is Groups, but returns known itself (no copy) if the names are
// known's, in order.
func (v Stored) groupsOr(known []string) []string {
	if len(v.Pairs) == 0 {
		return nil
	}
	if len(v.Pairs) == 2*len(known) {
		same := true
		for i, g := range known {
			same = same && v.Pairs[2*i] == g
		}
		if same {
			return known
		}
	}
	out := make([]string, len(v.Pairs)/2)
	for i := range out {
		out[i] = v.Pairs[2*i]
	}
	return out
}

// ErrNoHeader reports a value without a header: written by an earlier
// version of this package, its groups are in its meta list (Keys.Meta),
// which only the read script consults.
var ErrNoHeader = errors.New("l2: value without a header")

// maxHeaderGroups bounds the group count a header may claim, far above any
// the library writes (tier.MaxGroupsPerEntry plus its own two).
const maxHeaderGroups = 1 << 12

// ParseStored splits a value key's content into its header and envelope.
// It wraps ErrCorrupt for a malformed header; it never panics, and the
// strings it returns share v's memory.
func ParseStored(v string) (Stored, error) {
	return parseStored(v, nil)
}

// parseStored is ParseStored, with Pairs appended to pairs[:0].
func parseStored(v string, pairs []string) (Stored, error) {
	if len(v) == 0 || v[0] != 'T' {
		return Stored{}, ErrNoHeader
	}
	if len(v) < 2 || (v[1] != '1' && v[1] != 'n') {
		return Stored{}, fmt.Errorf("%w: header marker", ErrCorrupt)
	}
	out := Stored{Negative: v[1] == 'n'}
	rest := v[2:]
	exp, rest, ok := number(rest)
	if !ok {
		return Stored{}, fmt.Errorf("%w: header expiry", ErrCorrupt)
	}
	n, rest, ok := number(rest)
	if !ok || n > maxHeaderGroups || 4*n > int64(len(rest)) {
		return Stored{}, fmt.Errorf("%w: header group count", ErrCorrupt)
	}
	out.Expiry = exp
	if n > 0 {
		out.Pairs = slices.Grow(pairs[:0], int(2*n))[:2*n]
	}
	for i := range out.Pairs {
		l, r, ok := number(rest)
		if !ok || l > int64(len(r)) {
			return Stored{}, fmt.Errorf("%w: header group %d", ErrCorrupt, i/2)
		}
		out.Pairs[i], rest = r[:l], r[l:]
	}
	out.Envelope = rest
	if out.Negative != (rest == "") {
		return Stored{}, fmt.Errorf("%w: header marker and envelope disagree", ErrCorrupt)
	}
	return out, nil
}

// number reads a decimal number of at most 18 digits ended by ':'.
func number(s string) (int64, string, bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || i > 18 {
		return 0, s, false
	}
	var n int64
	for _, c := range []byte(s[:i]) {
		if c < '0' || c > '9' {
			return 0, s, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, s[i+1:], true
}

// AppendStored appends the stored form of v to b, as the scripts write it.
// The library's writes all go through the scripts; this is for tests and
// tools.
func AppendStored(b []byte, v Stored) []byte {
	b = append(b, 'T')
	if v.Negative {
		b = append(b, 'n')
	} else {
		b = append(b, '1')
	}
	b = strconv.AppendInt(b, v.Expiry, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(len(v.Pairs)/2), 10)
	b = append(b, ':')
	for _, p := range v.Pairs[:len(v.Pairs)&^1] {
		b = strconv.AppendInt(b, int64(len(p)), 10)
		b = append(b, ':')
		b = append(b, p...)
	}
	return append(b, v.Envelope...)
}

// nowLua defines now(): Redis's clock (TIME) in microseconds, read once per
// run of the script, so that every use in one run sees the same instant.
const nowLua = `
local T
local function now()
  if not T then
    local t = redis.call('TIME')
    T = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return T
end
`

// headerLua defines now (nowLua) and, after names (gclockLua):
//
//   - header(marker, ttl, meta) returns the header of a value written now
//     that lives ttl ms, for the meta list {marker, name, stamp, ...} that
//     stamps builds (marker ignored: the first argument replaces it);
//   - unheader(v) returns the marker, {name, stamp, ...} and the position
//     of the envelope of a value with a header, or nil for one without
//     (written by an earlier version) or with a malformed one.
//
// Keep them in step with ParseStored and AppendStored, and with the header
// that writeScript (store.go) writes by itself.
const headerLua = nowLua + `
local function header(marker, ttl, meta)
  local exp = math.floor(now() / 1000) + ttl
  local h = {'T', marker, string.format('%.0f', exp), ':', string.format('%d', (#meta - 1) / 2), ':'}
  for i = 2, #meta do
    h[#h + 1] = string.format('%d', #meta[i]) .. ':' .. meta[i]
  end
  return table.concat(h)
end
local function unheader(v)
  local marker = string.sub(v, 2, 2)
  if string.sub(v, 1, 1) ~= 'T' or (marker ~= '1' and marker ~= 'n') then return nil end
  local e = string.find(v, ':', 3, true)
  if not e then return nil end
  local c = string.find(v, ':', e + 1, true)
  if not c then return nil end
  local n = tonumber(string.sub(v, e + 1, c - 1))
  if not n or n > 4096 then return nil end
  local m, p = {}, c + 1
  for i = 1, 2 * n do
    local q = string.find(v, ':', p, true)
    if not q then return nil end
    local l = tonumber(string.sub(v, p, q - 1))
    if not l or q + l > #v then return nil end
    m[i] = string.sub(v, q + 1, q + l)
    p = q + l + 1
  end
  return marker, m, p
end
`

// DecodeValue decodes a value key's content, with or without a header (an
// earlier version's), to its envelope. A stored "not found" has none: it
// is reported as ErrCorrupt, as any malformed content is.
func DecodeValue(v []byte) (Envelope, error) {
	st, err := ParseStored(string(v))
	switch {
	case errors.Is(err, ErrNoHeader):
		return DecodeEnvelope(v)
	case err != nil:
		return Envelope{}, err
	case st.Negative:
		return Envelope{}, fmt.Errorf("%w: a stored \"not found\"", ErrCorrupt)
	}
	return DecodeEnvelope([]byte(st.Envelope))
}
