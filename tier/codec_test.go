package tier_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Paris and friends on machines without a zoneinfo

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/tier"
)

// CodecBase is embedded by value in codecRecord; it is exported because an
// embedded field takes its type's name, and only exported fields travel.
type CodecBase struct {
	ID      uint64
	Created time.Time
}

// CodecAudit is embedded by pointer in codecRecord.
type CodecAudit struct {
	By   string
	Note []byte
}

// codecPromoted is an unexported type embedded by value: its exported
// fields are promoted, as encoding/json promotes them.
type codecPromoted struct {
	Promoted string
}

// codecItem is the struct held in codecRecord's maps, slices and pointers.
type codecItem struct {
	Name  string
	At    time.Time
	Score float64
	Tags  []string
	Meta  map[string]string
}

// codecNested is a struct in a struct in a struct.
type codecNested struct {
	Level int
	Inner struct {
		Words []string
		When  *time.Time
	}
}

// codecRecord holds every kind of field the default codec promises to give
// back exactly.
type codecRecord struct {
	CodecBase
	*CodecAudit
	codecPromoted

	Bool     bool
	Int      int
	Int8     int8
	Int64    int64
	Uint8    uint8
	Uint64   uint64
	Float64  float64
	Float32  float32
	String   string
	Bytes    []byte
	Time     time.Time
	TimePtr  *time.Time
	Duration time.Duration
	Big      big.Int
	BigPtr   *big.Int
	IntPtr   *int64
	Ints     []int64
	Floats   []float32
	Strings  []string
	Times    []time.Time
	Counts   map[string]int
	Items    map[string]codecItem
	ItemList []codecItem
	ItemPtr  *codecItem
	Array    [3]uint16
	Bytes4   [4]byte
	Grid     [2][2]float64
	Nested   codecNested
	Addr     netip.Addr
}

// exactCmp makes cmp tell apart every two values that differ in anything the
// codec promises to keep:
//   - time.Time: cmp would use Equal, which compares instants (to the
//     nanosecond) but not offsets nor whether a time is UTC;
//   - floats: == makes -0 equal to 0 and NaN unequal to itself, and
//     cmpopts.EquateNaNs does not fix the former; bits are compared, and
//     any NaN equals any NaN (the codec keeps no NaN payload);
//   - big.Int and netip.Addr have unexported fields, which cmp refuses;
//     codecRecord embeds an unexported type, which cmp lets through.
var exactCmp = codecCmp(sameTime)

// codecCmp returns exactCmp with sameTime replaced by times.
func codecCmp(times func(a, b time.Time) bool) cmp.Options {
	return cmp.Options{
		cmp.AllowUnexported(codecRecord{}),
		cmp.Comparer(times),
		cmp.Comparer(sameFloat64),
		cmp.Comparer(sameFloat32),
		cmp.Comparer(func(a, b big.Int) bool { return a.Cmp(&b) == 0 }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	}
}

// sameTime reports whether a and b are the same instant to the nanosecond,
// at the same UTC offset, and both or neither in time.UTC.
func sameTime(a, b time.Time) bool {
	_, offA := a.Zone()
	_, offB := b.Zone()
	return a.Equal(b) && a.Nanosecond() == b.Nanosecond() && offA == offB &&
		(a.Location() == time.UTC) == (b.Location() == time.UTC)
}

// sameInstantAndOffset is sameTime without the UTC clause, for tests that
// check the Location themselves or cannot (FuzzCBORDecode).
func sameInstantAndOffset(a, b time.Time) bool {
	_, offA := a.Zone()
	_, offB := b.Zone()
	return a.Equal(b) && offA == offB
}

// sameFloat64 reports whether a and b have the same bits or are both NaN.
func sameFloat64(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Float64bits(a) == math.Float64bits(b)
}

// sameFloat32 reports whether a and b have the same bits or are both NaN.
func sameFloat32(a, b float32) bool {
	if math.IsNaN(float64(a)) || math.IsNaN(float64(b)) {
		return math.IsNaN(float64(a)) && math.IsNaN(float64(b))
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

// checkRoundTrip fails t unless CBOR[V] gives v back exactly, encodes it to
// the same bytes twice, and encodes what it gave back to those bytes again.
func checkRoundTrip[V any](t *testing.T, v V) {
	t.Helper()
	var c tier.CBOR[V]
	b, got := encodeDecode(t, v)
	if d := cmp.Diff(v, got, exactCmp); d != "" {
		t.Fatalf("round trip changed the value (-sent +got):\n%s\nbytes % x", d, b)
	}
	if again, err := c.Encode(v); err != nil || !bytes.Equal(again, b) {
		t.Fatalf("encoding is not deterministic: % x then % x (%v)", b, again, err)
	}
	if re, err := c.Encode(got); err != nil || !bytes.Equal(re, b) {
		t.Fatalf("the decoded value encodes to % x, the sent one to % x (%v)", re, b, err)
	}
}

// roundTrips returns a subtest that checks v's round trip.
func roundTrips[V any](v V) func(*testing.T) {
	return func(t *testing.T) {
		t.Helper()
		checkRoundTrip(t, v)
	}
}

func mustLocation(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%q): %v", name, err)
	}
	return loc
}

func bigInt(t testing.TB, s string) *big.Int {
	t.Helper()
	b, ok := new(big.Int).SetString(s, 0)
	if !ok {
		t.Fatalf("bad big.Int %q", s)
	}
	return b
}

// fullRecord is a codecRecord with every field set to a value that is not
// its zero.
func fullRecord(t testing.TB) codecRecord {
	t.Helper()
	at := time.Date(2024, 5, 9, 19, 49, 2, 630577000, time.UTC)
	ist := time.Date(2024, 5, 10, 1, 19, 2, 1, time.FixedZone("", 5*3600+30*60))
	n := int64(-42)
	r := codecRecord{
		CodecBase:     CodecBase{ID: 7, Created: at.Add(-time.Hour)},
		CodecAudit:    &CodecAudit{By: "ops", Note: []byte{}},
		codecPromoted: codecPromoted{Promoted: "up"},
		Bool:          true,
		Int:           math.MinInt,
		Int8:          math.MinInt8,
		Int64:         math.MaxInt64,
		Uint8:         math.MaxUint8,
		Uint64:        math.MaxUint64,
		Float64:       math.Copysign(0, -1),
		Float32:       float32(math.Inf(-1)),
		String:        "caf\xe9 \xff",
		Bytes:         []byte{0, 1, 0xff},
		Time:          at,
		TimePtr:       &ist,
		Duration:      -1500 * time.Millisecond,
		BigPtr:        bigInt(t, "-0x1234567890abcdef1234567890abcdef"),
		IntPtr:        &n,
		Ints:          []int64{math.MinInt64, 0, math.MaxInt64},
		Floats:        []float32{float32(math.NaN()), 1.1, float32(math.Copysign(0, -1)), math.MaxFloat32, math.SmallestNonzeroFloat32},
		Strings:       []string{"", "a", "\x00"},
		Times:         []time.Time{{}, at, ist},
		Counts:        map[string]int{"a": 1, "": 0, "\xfe": -1},
		Items: map[string]codecItem{
			"x": {Name: "x", At: at, Score: math.NaN(), Tags: []string{}, Meta: nil},
			"y": {Name: "y", Tags: nil, Meta: map[string]string{}},
		},
		ItemList: []codecItem{{Name: "first", Score: math.Inf(1)}, {}},
		ItemPtr:  &codecItem{Name: "p", Meta: map[string]string{"k": "v"}},
		Array:    [3]uint16{1, 0, math.MaxUint16},
		Bytes4:   [4]byte{0xde, 0xad, 0xbe, 0xef},
		Grid:     [2][2]float64{{1.5, -2}, {math.SmallestNonzeroFloat64, math.MaxFloat64}},
		Addr:     netip.MustParseAddr("2001:db8::1"),
	}
	r.Big.Lsh(big.NewInt(1), 200)
	r.Nested.Level = 3
	r.Nested.Inner.Words = []string{"deep"}
	r.Nested.Inner.When = &at
	return r
}

// TestCBORRoundTrip checks a fixed corpus of the values CBOR's doc promises
// to give back exactly.
func TestCBORRoundTrip(t *testing.T) {
	paris := mustLocation(t, "Europe/Paris")
	kathmandu := mustLocation(t, "Asia/Kathmandu")
	ns := time.Date(2024, 5, 9, 19, 49, 2, 630577123, time.UTC)
	x := 5
	px := &x
	cases := []struct {
		name string
		test func(*testing.T)
	}{
		{"bool", roundTrips(true)},
		{"int max", roundTrips(math.MaxInt)},
		{"int min", roundTrips(math.MinInt)},
		{"int64 max", roundTrips(int64(math.MaxInt64))},
		{"int64 min", roundTrips(int64(math.MinInt64))},
		{"uint64 max", roundTrips(uint64(math.MaxUint64))},
		{"int8 min", roundTrips(int8(math.MinInt8))},
		{"uint32 max", roundTrips(uint32(math.MaxUint32))},
		{"big 2^64", roundTrips(*new(big.Int).Lsh(big.NewInt(1), 64))},
		{"big -2^64-1", roundTrips(*bigInt(t, "-18446744073709551617"))},
		{"big -2^64 fits CBOR", roundTrips(*bigInt(t, "-18446744073709551616"))},
		{"big max uint64", roundTrips(*new(big.Int).SetUint64(math.MaxUint64))},
		{"big zero", roundTrips(big.Int{})},
		{"big 2^300 pointer", roundTrips(new(big.Int).Lsh(big.NewInt(3), 300))},
		{"big nil pointer", roundTrips((*big.Int)(nil))},
		{"float zero", roundTrips(0.0)},
		{"float negative zero", roundTrips(math.Copysign(0, -1))},
		{"float NaN", roundTrips(math.NaN())},
		{"float +Inf", roundTrips(math.Inf(1))},
		{"float -Inf", roundTrips(math.Inf(-1))},
		{"float max", roundTrips(math.MaxFloat64)},
		{"float smallest", roundTrips(math.SmallestNonzeroFloat64)},
		{"float 0.1", roundTrips(0.1)},
		{"float half subnormal", roundTrips(5.960464477539063e-08)},
		{"float32 1.1", roundTrips(float32(1.1))},
		{"float32 negative zero", roundTrips(float32(math.Copysign(0, -1)))},
		{"float32 NaN", roundTrips(float32(math.NaN()))},
		{"float32 smallest", roundTrips(float32(math.SmallestNonzeroFloat32))},
		{"float32 max", roundTrips(float32(math.MaxFloat32))},
		{"string empty", roundTrips("")},
		{"string UTF-8", roundTrips("héllo, 世界")},
		{"string invalid UTF-8", roundTrips("\xff\xfe\xc3(\x00")},
		{"bytes nil", roundTrips([]byte(nil))},
		{"bytes empty", roundTrips([]byte{})},
		{"bytes", roundTrips([]byte{0, 0xff, 0x80})},
		{"slice nil", roundTrips([]int(nil))},
		{"slice empty", roundTrips([]int{})},
		{"map nil", roundTrips(map[string]int(nil))},
		{"map empty", roundTrips(map[string]int{})},
		{"map invalid UTF-8 keys", roundTrips(map[string]string{"\xff": "a", "\xfe": "\xfd"})},
		{"map of nil and empty", roundTrips(map[string][]int{"nil": nil, "empty": {}, "one": {1}})},
		{"map int keys", roundTrips(map[int64]string{math.MinInt64: "min", -1: "", 0: "z", math.MaxInt64: "max"})},
		{"map struct values", roundTrips(map[string]codecItem{"a": {Name: "a", At: ns}, "b": {}})},
		{"slice of nil and empty", roundTrips([][]byte{nil, {}, {1}})},
		{"array", roundTrips([3]int{-1, 0, 1})},
		{"array empty", roundTrips([0]int{})},
		{"byte array", roundTrips([4]byte{1, 2, 3, 4})},
		{"time zero", roundTrips(time.Time{})},
		{"time UTC nanoseconds", roundTrips(ns)},
		{"time offset +05:30", roundTrips(ns.In(time.FixedZone("", 5*3600+30*60)))},
		{"time offset -09:30", roundTrips(ns.In(time.FixedZone("", -(9*3600 + 30*60))))},
		{"time offset +14:00", roundTrips(ns.In(time.FixedZone("", 14*3600)))},
		{"time offset 24:59", roundTrips(ns.In(time.FixedZone("", 24*3600+59*60)))},
		{"time Paris summer", roundTrips(time.Date(2024, 7, 14, 12, 0, 0, 1, paris))},
		{"time Paris winter", roundTrips(time.Date(2024, 1, 14, 12, 0, 0, 999999999, paris))},
		{"time Kathmandu", roundTrips(ns.In(kathmandu))},
		{"time year 0", roundTrips(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC))},
		{"time year 9999 at +14:00", roundTrips(time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", 14*3600)))},
		{"time year 1 at -12:00", roundTrips(time.Date(1, 1, 1, 0, 0, 0, 0, time.FixedZone("", -12*3600)))},
		{"times", roundTrips([]time.Time{{}, ns, ns.In(paris)})},
		{"time nil pointer", roundTrips((*time.Time)(nil))},
		{"time pointer", roundTrips(&ns)},
		{"duration", roundTrips(1500 * time.Millisecond)},
		{"duration min", roundTrips(time.Duration(math.MinInt64))},
		{"duration max", roundTrips(time.Duration(math.MaxInt64))},
		{"pointer nil", roundTrips((*int)(nil))},
		{"pointer", roundTrips(px)},
		{"pointer to pointer", roundTrips(&px)},
		{"pointer to struct", roundTrips(&codecItem{Name: "p", Tags: []string{}})},
		{"netip.Addr", roundTrips(netip.MustParseAddr("192.0.2.1"))},
		{"record zero", roundTrips(codecRecord{})},
		{"record full", roundTrips(fullRecord(t))},
	}
	for _, c := range cases {
		t.Run(c.name, c.test)
	}
}

// TestCBORRoundTripRandom checks the round trip of random records: random
// bits for floats (NaNs with payloads and subnormals included), random bytes
// for strings, integers over their whole range, big integers to 320 bits,
// times from year 0 to 9999 at random offsets, and nil, empty and filled
// containers and pointers.
func TestCBORRoundTripRandom(t *testing.T) {
	const seed = 20240509
	t.Logf("seed %d", seed)
	g := &codecGen{r: rand.New(rand.NewPCG(seed, seed)), locs: []*time.Location{
		mustLocation(t, "Europe/Paris"),
		mustLocation(t, "America/New_York"),
		mustLocation(t, "Asia/Kolkata"),
		mustLocation(t, "Australia/Lord_Howe"),
		mustLocation(t, "Pacific/Chatham"),
	}}
	for i := range 500 {
		v := g.record()
		if !t.Run(fmt.Sprintf("record %d", i), func(t *testing.T) { checkRoundTrip(t, v) }) {
			t.Fatalf("record %d of seed %d failed", i, seed)
		}
	}
	for range 200 {
		checkRoundTrip(t, g.items())
		checkRoundTrip(t, g.times())
	}
}

// codecGen makes random values for TestCBORRoundTripRandom.
type codecGen struct {
	r    *rand.Rand
	locs []*time.Location
}

// oneIn reports true once in n calls, on average.
func (g *codecGen) oneIn(n int) bool { return g.r.IntN(n) == 0 }

func (g *codecGen) float64() float64 {
	switch g.r.IntN(6) {
	case 0:
		return []float64{0, math.Copysign(0, -1), math.Inf(1), math.Inf(-1), math.NaN(),
			math.MaxFloat64, math.SmallestNonzeroFloat64}[g.r.IntN(7)]
	case 1:
		return g.r.NormFloat64()
	case 2:
		return float64(float32(g.r.NormFloat64())) // fits a float32
	default:
		return math.Float64frombits(g.r.Uint64())
	}
}

func (g *codecGen) float32() float32 {
	if g.oneIn(4) {
		return float32(g.float64())
	}
	return math.Float32frombits(g.r.Uint32())
}

// int64 returns an integer from anywhere in int64's range, small ones
// more often.
func (g *codecGen) int64() int64 {
	if g.oneIn(2) {
		return g.r.Int64N(2048) - 1024
	}
	return int64(g.r.Uint64())
}

func (g *codecGen) bytes() []byte {
	switch g.r.IntN(4) {
	case 0:
		return nil
	case 1:
		return []byte{}
	}
	b := make([]byte, g.r.IntN(24))
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return b
}

// string returns random bytes, which are mostly not UTF-8.
func (g *codecGen) string() string {
	if g.oneIn(3) {
		return "plain"
	}
	return string(g.bytes())
}

func (g *codecGen) strings() []string {
	switch g.r.IntN(3) {
	case 0:
		return nil
	case 1:
		return []string{}
	}
	s := make([]string, 1+g.r.IntN(4))
	for i := range s {
		s[i] = g.string()
	}
	return s
}

func (g *codecGen) stringMap() map[string]string {
	switch g.r.IntN(3) {
	case 0:
		return nil
	case 1:
		return map[string]string{}
	}
	m := map[string]string{}
	for range 1 + g.r.IntN(4) {
		m[g.string()] = g.string()
	}
	return m
}

// time returns a time from year 0 to 9999 at whatever offset it has: UTC,
// a fixed zone of any whole-minute offset under 24 hours, or a named
// location (from 1980 on, after every one of g.locs has whole-minute
// offsets).
func (g *codecGen) time() time.Time {
	if g.oneIn(8) {
		return time.Time{}
	}
	lo := time.Date(0, 1, 2, 0, 0, 0, 0, time.UTC).Unix()
	hi := time.Date(9999, 12, 30, 0, 0, 0, 0, time.UTC).Unix()
	t := time.Unix(lo+g.r.Int64N(hi-lo), g.r.Int64N(1e9)).UTC()
	switch g.r.IntN(3) {
	case 0:
		return t
	case 1:
		off := (g.r.IntN(2*24*60-1) - (24*60 - 1)) * 60
		if off == 0 {
			return t
		}
		return t.In(time.FixedZone("", off))
	}
	lo = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	return time.Unix(lo+g.r.Int64N(hi-lo), g.r.Int64N(1e9)).In(g.locs[g.r.IntN(len(g.locs))])
}

func (g *codecGen) timePtr() *time.Time {
	t := g.time()
	if t.IsZero() {
		return nil // a pointer to the zero Time comes back nil (TestCBORDoesNotCarry)
	}
	return &t
}

func (g *codecGen) times() []time.Time {
	if g.oneIn(4) {
		return nil
	}
	s := make([]time.Time, g.r.IntN(5))
	for i := range s {
		s[i] = g.time()
	}
	return s
}

// bigInt returns an integer of up to 320 bits, either sign.
func (g *codecGen) bigInt() *big.Int {
	mag := make([]byte, g.r.IntN(41))
	for i := range mag {
		mag[i] = byte(g.r.Uint32())
	}
	b := new(big.Int).SetBytes(mag)
	b.Rsh(b, uint(g.r.IntN(8)))
	if g.oneIn(2) {
		b.Neg(b)
	}
	return b
}

func (g *codecGen) item() codecItem {
	return codecItem{Name: g.string(), At: g.time(), Score: g.float64(), Tags: g.strings(), Meta: g.stringMap()}
}

func (g *codecGen) items() map[string]codecItem {
	if g.oneIn(4) {
		return nil
	}
	m := map[string]codecItem{}
	for range g.r.IntN(4) {
		m[g.string()] = g.item()
	}
	return m
}

func (g *codecGen) record() codecRecord {
	r := codecRecord{
		CodecBase:     CodecBase{ID: g.r.Uint64(), Created: g.time()},
		codecPromoted: codecPromoted{Promoted: g.string()},
		Bool:          g.oneIn(2),
		Int:           int(g.int64()),
		Int8:          int8(g.int64()),
		Int64:         g.int64(),
		Uint8:         uint8(g.r.Uint32()),
		Uint64:        g.r.Uint64(),
		Float64:       g.float64(),
		Float32:       g.float32(),
		String:        g.string(),
		Bytes:         g.bytes(),
		Time:          g.time(),
		TimePtr:       g.timePtr(),
		Duration:      time.Duration(g.int64()),
		Strings:       g.strings(),
		Times:         g.times(),
		Items:         g.items(),
		Array:         [3]uint16{uint16(g.r.Uint32()), uint16(g.r.Uint32()), uint16(g.r.Uint32())},
		Bytes4:        [4]byte{byte(g.r.Uint32()), 0, byte(g.r.Uint32()), 0xff},
		Grid:          [2][2]float64{{g.float64(), g.float64()}, {g.float64(), g.float64()}},
	}
	r.Big.Set(g.bigInt())
	if !g.oneIn(3) {
		r.CodecAudit = &CodecAudit{By: g.string(), Note: g.bytes()}
	}
	if !g.oneIn(3) {
		r.BigPtr = g.bigInt()
	}
	if !g.oneIn(3) {
		n := g.int64()
		r.IntPtr = &n
	}
	if !g.oneIn(3) {
		r.Ints = make([]int64, g.r.IntN(5))
		for i := range r.Ints {
			r.Ints[i] = g.int64()
		}
	}
	if !g.oneIn(3) {
		r.Floats = make([]float32, g.r.IntN(5))
		for i := range r.Floats {
			r.Floats[i] = g.float32()
		}
	}
	if !g.oneIn(3) {
		r.Counts = map[string]int{}
		for range g.r.IntN(4) {
			r.Counts[g.string()] = int(g.int64())
		}
	}
	if !g.oneIn(3) {
		r.ItemList = make([]codecItem, g.r.IntN(3))
		for i := range r.ItemList {
			r.ItemList[i] = g.item()
		}
	}
	if !g.oneIn(3) {
		it := g.item()
		r.ItemPtr = &it
	}
	if !g.oneIn(3) {
		var a [16]byte
		for i := range a {
			a[i] = byte(g.r.Uint32())
		}
		r.Addr = netip.AddrFrom16(a)
	}
	r.Nested.Level = int(g.int64())
	r.Nested.Inner.Words = g.strings()
	r.Nested.Inner.When = g.timePtr()
	return r
}

// TestCBORTimeZones pins down the Location of a decoded time.Time, which
// sameTime checks only for UTC: an offset of zero comes back UTC (the zero
// Time included), any other offset comes back time.Local if Local has that
// offset at that instant, else an unnamed zone of that offset; the instant
// and the wall clock stay, to the nanosecond.
func TestCBORTimeZones(t *testing.T) {
	paris := mustLocation(t, "Europe/Paris")
	ns := time.Date(2024, 5, 9, 19, 49, 2, 630577123, time.UTC)
	cases := []struct {
		name string
		in   time.Time
	}{
		{"UTC", ns},
		{"zero", time.Time{}},
		{"unnamed zero offset", ns.In(time.FixedZone("", 0))},
		{"named zero offset", ns.In(time.FixedZone("GMT", 0))},
		{"named fixed zone", ns.In(time.FixedZone("EST", -5*3600))},
		{"Europe/Paris summer", ns.In(paris)},
		{"Europe/Paris winter", ns.AddDate(0, 6, 0).In(paris)},
		{"Local", time.Now()},
		{"Local in six months", time.Now().AddDate(0, 6, 0)},
	}
	var c tier.CBOR[time.Time]
	const wall = time.DateTime + ".999999999"
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := c.Encode(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !sameInstantAndOffset(got, tc.in) || got.IsZero() != tc.in.IsZero() ||
				got.Format(wall) != tc.in.Format(wall) {
				t.Fatalf("%v came back as %v: instant, offset or wall clock changed", tc.in, got)
			}
			_, off := tc.in.Zone()
			_, localOff := tc.in.In(time.Local).Zone()
			name, _ := got.Zone()
			switch {
			case off == 0:
				if got.Location() != time.UTC {
					t.Fatalf("%v came back in %v, want UTC", tc.in, got.Location())
				}
			case off == localOff:
				if got.Location() != time.Local {
					t.Fatalf("%v came back in %v, want Local", tc.in, got.Location())
				}
			case name != "" || got.Location() == time.Local:
				t.Fatalf("%v came back in zone %q of %v, want an unnamed zone", tc.in, name, got.Location())
			}
		})
	}
}

// The Codec and CBOR docs list what does not come back as it went; each
// case here keeps one line of them true.
func TestCBORDoesNotCarry(t *testing.T) {
	t.Run("unexported fields", func(t *testing.T) {
		type withUnexported struct {
			Exported   int
			unexported int
		}
		got := roundTrip(t, withUnexported{Exported: 1, unexported: 2})
		if got.Exported != 1 || got.unexported != 0 {
			t.Fatalf("got %+v, want the exported field only", got)
		}
	})
	t.Run("fields tagged -", func(t *testing.T) {
		type tagged struct {
			Kept   int
			ByCBOR int `cbor:"-"`
			ByJSON int `json:"-"`
		}
		if got := roundTrip(t, tagged{Kept: 1, ByCBOR: 2, ByJSON: 3}); got != (tagged{Kept: 1}) {
			t.Fatalf("got %+v, want the untagged field only", got)
		}
	})
	t.Run("empty omitempty", func(t *testing.T) {
		type omitted struct {
			Slice []int          `json:",omitempty"`
			Map   map[string]int `cbor:",omitempty"`
			Zero  time.Time      `json:",omitzero"`
		}
		got := roundTrip(t, omitted{Slice: []int{}, Map: map[string]int{}})
		if got.Slice != nil || got.Map != nil || !got.Zero.IsZero() {
			t.Fatalf("got %#v, want nil containers", got)
		}
	})
	t.Run("pointer to the zero time", func(t *testing.T) {
		if got := roundTrip(t, &time.Time{}); got != nil {
			t.Fatalf("got %v, want nil", got)
		}
	})
	t.Run("offset with seconds", func(t *testing.T) {
		// Paris kept local mean time, 0:09:21 ahead of UTC, until 1911.
		in := time.Date(1900, 1, 1, 0, 0, 0, 0, mustLocation(t, "Europe/Paris"))
		if _, off := in.Zone(); off != 9*60+21 {
			t.Fatalf("tzdata gives Paris in 1900 an offset of %ds; the case needs seconds", off)
		}
		got := roundTrip(t, in)
		if _, off := got.Zone(); off != 9*60 || got.Sub(in) != 21*time.Second ||
			got.Format(time.DateTime) != in.Format(time.DateTime) {
			t.Fatalf("%v came back as %v (%v later)", in, got, got.Sub(in))
		}
	})
	for _, tc := range []struct {
		name string
		in   time.Time
	}{
		{"year 10000", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"year -1", time.Date(-1, 12, 31, 0, 0, 0, 0, time.UTC)},
		{"year 10000 at its offset", time.Date(9999, 12, 31, 23, 30, 0, 0, time.UTC).In(time.FixedZone("", 3600))},
		{"year -1 at its offset", time.Date(0, 1, 1, 0, 30, 0, 0, time.UTC).In(time.FixedZone("", -3600))},
		{"offset +25:00", time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("", 25*3600))},
		{"offset -25:00", time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("", -25*3600))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tier.CBOR[time.Time]{}.Encode(tc.in)
			if err != nil {
				t.Fatalf("Encode: %v; the doc says Encode writes it", err)
			}
			if got, err := (tier.CBOR[time.Time]{}).Decode(b); err == nil {
				t.Fatalf("Decode(%q) = %v, want an error", b, got)
			}
		})
	}
	t.Run("interfaces", func(t *testing.T) {
		type holder struct{ A, B, C, D any }
		got := roundTrip(t, holder{A: int(5), B: int64(-5), C: map[string]int{"k": 1}, D: float32(1.5)})
		want := holder{A: uint64(5), B: int64(-5), C: map[any]any{"k": uint64(1)}, D: 1.5}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("(-want +got):\n%s", d)
		}
	})
	t.Run("names two embedded structs share", func(t *testing.T) {
		type left struct{ ID, L int }
		type right struct{ ID, R int }
		type both struct {
			left
			right
		}
		got := roundTrip(t, both{left{ID: 1, L: 2}, right{ID: 3, R: 4}})
		if got != (both{left{L: 2}, right{R: 4}}) {
			t.Fatalf("got %+v, want ID dropped", got)
		}
	})
	t.Run("NaN keys", func(t *testing.T) {
		m := map[float64]int{math.NaN(): 1, math.NaN(): 2, math.NaN(): 3, 0: 4}
		got := roundTrip(t, m)
		sum := 0
		for k, v := range got {
			if !math.IsNaN(k) && k != 0 {
				t.Fatalf("got key %v", k)
			}
			sum += v
		}
		if len(got) != 4 || sum != 10 {
			t.Fatalf("got %v, want every entry back", got)
		}
	})
	t.Run("shared pointers", func(t *testing.T) {
		type pair struct{ A, B *codecItem }
		it := &codecItem{Name: "shared"}
		got := roundTrip(t, pair{A: it, B: it})
		if got.A == got.B || got.A.Name != "shared" || got.B.Name != "shared" {
			t.Fatalf("got %p and %p, want two copies", got.A, got.B)
		}
	})
	t.Run("nesting over 256 levels", func(t *testing.T) {
		type node struct{ Next *node }
		var deep *node
		for range 256 {
			deep = &node{Next: deep}
		}
		if roundTrip(t, deep) == nil {
			t.Fatal("256 levels did not come back")
		}
		b, err := tier.CBOR[*node]{}.Encode(&node{Next: deep})
		if err != nil {
			t.Fatalf("Encode: %v; the doc says Encode writes it", err)
		}
		if _, err := (tier.CBOR[*node]{}).Decode(b); err == nil {
			t.Fatal("Decode of 257 levels succeeded, want an error")
		}
	})
	t.Run("channels funcs complex", func(t *testing.T) {
		if _, err := (tier.CBOR[chan int]{}).Encode(make(chan int)); err == nil {
			t.Error("Encode(chan) succeeded")
		}
		if _, err := (tier.CBOR[func()]{}).Encode(func() {}); err == nil {
			t.Error("Encode(func) succeeded")
		}
		if _, err := (tier.CBOR[complex128]{}).Encode(1i); err == nil {
			t.Error("Encode(complex128) succeeded")
		}
	})
	t.Run("NaN payload and sign", func(t *testing.T) {
		const quietNaN = 0x7ff8000000000000
		for _, bits := range []uint64{quietNaN, quietNaN | 0xbeef, 0xfff8000000000000, 0x7ff0000000000001} {
			got := roundTrip(t, math.Float64frombits(bits))
			if math.Float64bits(got) != quietNaN {
				t.Errorf("NaN %#x came back as %#x, want %#x", bits, math.Float64bits(got), uint64(quietNaN))
			}
		}
	})
}

// roundTrip returns CBOR[V]'s decoding of its encoding of v.
func roundTrip[V any](t *testing.T, v V) V {
	t.Helper()
	_, got := encodeDecode(t, v)
	return got
}

// encodeDecode returns CBOR[V]'s encoding of v and the decoding of that.
func encodeDecode[V any](t *testing.T, v V) ([]byte, V) {
	t.Helper()
	var c tier.CBOR[V]
	b, err := c.Encode(v)
	if err != nil {
		t.Fatalf("Encode(%#v): %v", v, err)
	}
	got, err := c.Decode(b)
	if err != nil {
		t.Fatalf("Decode(Encode(%#v)) = %v; bytes % x", v, err, b)
	}
	return b, got
}

// Decode refuses what Encode never writes, and returns the zero value with
// its error.
func TestCBORDecodeRefuses(t *testing.T) {
	timeText := "2024-05-09T19:49:02.630577Z"
	text := append([]byte{0x78, byte(len(timeText))}, timeText...)
	cases := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"truncated", []byte{0xa1, 0x64, 'T', 'i', 'm', 'e'}},
		{"trailing byte", []byte{0xa0, 0x00}},
		{"time as epoch seconds", []byte{0xa1, 0x64, 'T', 'i', 'm', 'e', 0x1a, 0x66, 0x3d, 0x28, 0x3e}},
		{"time as epoch float", []byte{0xa1, 0x64, 'T', 'i', 'm', 'e', 0xfb, 0x41, 0xd9, 0x8f, 0x4a, 0x0f, 0xa8, 0x50, 0x00}},
		{"time as tag 1", []byte{0xa1, 0x64, 'T', 'i', 'm', 'e', 0xc1, 0x1a, 0x66, 0x3d, 0x28, 0x3e}},
		{"time as untagged text", append([]byte{0xa1, 0x64, 'T', 'i', 'm', 'e'}, text...)},
		{"tag 0 before a number", []byte{0xa1, 0x66, 'S', 't', 'r', 'i', 'n', 'g', 0xc0, 0x01}},
		{"self-described CBOR tag", []byte{0xd9, 0xd9, 0xf7, 0xa0}},
		{"tag 21", []byte{0xa1, 0x65, 'B', 'y', 't', 'e', 's', 0xd5, 0x41, 0x01}},
		{"bignum that fits 64 bits", []byte{0xa1, 0x63, 'I', 'n', 't', 0xc2, 0x41, 0x01}},
		{"bignum with a leading zero", []byte{0xa1, 0x63, 'B', 'i', 'g', 0xc2, 0x4a, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{"bignum of a text", []byte{0xa1, 0x63, 'B', 'i', 'g', 0xc3, 0x69, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'}},
		{"indefinite-length map", []byte{0xbf, 0xff}},
		{"wrong type", []byte{0x63, 'a', 'b', 'c'}},
	}
	c := tier.CBOR[codecRecord]{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Decode(tc.data)
			if err == nil {
				t.Fatalf("Decode(% x) = %+v, want an error", tc.data, got)
			}
			if d := cmp.Diff(codecRecord{}, got, exactCmp); d != "" {
				t.Fatalf("Decode(% x) returned a value with its error:\n%s", tc.data, d)
			}
		})
	}
	// The same bytes with their tag, as Encode writes them, do decode.
	tagged := append([]byte{0xa1, 0x64, 'T', 'i', 'm', 'e', 0xc0}, text...)
	got, err := c.Decode(tagged)
	if want, _ := time.Parse(time.RFC3339, timeText); err != nil || !sameTime(got.Time, want) {
		t.Fatalf("Decode(% x) = %v, %v; want %v", tagged, got.Time, err, want)
	}
}

// FuzzCBORDecode proves that decoding any bytes into a few representative
// types never panics, and that whatever decodes encodes again, decodes to
// the same value, and encodes to the same bytes once more: a value read from
// Redis can be written back unchanged.
//
// Times are compared by instant and offset, not by sameTime's UTC clause:
// the decoder gives a time written "+00:00" (which Encode never writes)
// time.Local or an unnamed zone, and Encode writes any zero offset as "Z",
// which decodes to UTC.
// Seeds: testdata/fuzz/FuzzCBORDecode.
func FuzzCBORDecode(f *testing.F) {
	opts := codecCmp(sameInstantAndOffset)
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzRoundTrip[codecRecord](t, b, opts)
		fuzzRoundTrip[map[string]codecItem](t, b, opts)
		fuzzRoundTrip[[]time.Time](t, b, opts)
		fuzzRoundTrip[*big.Int](t, b, opts)
		fuzzRoundTrip[any](t, b, nil)
	})
}

// FuzzCBORFastPath proves that Decode of a string or a []byte, which reads
// a lone string without the CBOR decoder, answers every input exactly as
// the decoder does: the same value (nil and empty told apart) or an error.
// Seeds: testdata/fuzz/FuzzCBORFastPath.
func FuzzCBORFastPath(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsDecoder[string](t, b)
		sameAsDecoder[[]byte](t, b)
	})
}

// sameAsDecoder fails t unless CBOR[V].Decode(b) answers as the CBOR
// decoder behind it does, with the codec's options.
func sameAsDecoder[V any](t *testing.T, b []byte) {
	t.Helper()
	got, err := tier.CBOR[V]{}.Decode(b)
	var want V
	werr := tier.DecodeWithDecoder(b, &want)
	if (err == nil) != (werr == nil) {
		t.Fatalf("%T: Decode(% x) error %v; the decoder's %v", want, b, err, werr)
	}
	if err != nil {
		return
	}
	if !cmp.Equal(got, want) {
		t.Fatalf("%T: Decode(% x) = %v; the decoder's %v", want, b, got, want)
	}
	if gb, ok := any(got).([]byte); ok && (gb == nil) != (any(want).([]byte) == nil) {
		t.Fatalf("Decode(% x) = %#v; the decoder's %#v", b, got, want)
	}
}

// fuzzRoundTrip decodes b as a V and, if that succeeds, checks that the
// value encodes again, that its encoding decodes to the same value under
// opts, and that the encoding is a fixed point. With nil opts (for an
// interface, whose maps may have NaN keys, which no lookup finds again) only
// the fixed point is checked, and not even that for a map with a NaN key,
// whose entries are written in no fixed order.
func fuzzRoundTrip[V any](t *testing.T, b []byte, opts cmp.Options) {
	t.Helper()
	var c tier.CBOR[V]
	v, err := c.Decode(b)
	if err != nil {
		return
	}
	re, err := c.Encode(v)
	if err != nil {
		t.Fatalf("%T: Encode of a decoded value: %v\ninput % x", v, err, b)
	}
	v2, err := c.Decode(re)
	if err != nil {
		t.Fatalf("%T: Decode(Encode(Decode(% x))) = %v\nre-encoded % x", v, b, err, re)
	}
	if opts != nil && !cmp.Equal(v, v2, opts) {
		t.Fatalf("%T: re-encoding changed the value (-first +second):\n%s\ninput % x", v, cmp.Diff(v, v2, opts), b)
	}
	if opts == nil && hasNaNKey(v) {
		return
	}
	if re2, err := c.Encode(v2); err != nil || !bytes.Equal(re2, re) {
		t.Fatalf("%T: encoding is not a fixed point: % x then % x (%v)\ninput % x", v, re, re2, err, b)
	}
}

// hasNaNKey reports whether v, decoded into an interface, holds a map with a
// NaN key.
func hasNaNKey(v any) bool {
	switch v := v.(type) {
	case map[any]any:
		for k, e := range v {
			if f, ok := k.(float64); (ok && math.IsNaN(f)) || hasNaNKey(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if hasNaNKey(e) {
				return true
			}
		}
	}
	return false
}

// codecBenchUser is a typical cached API object: ten fields, two of them
// times.
type codecBenchUser struct {
	ID        int64             `json:"id"`
	Email     string            `json:"email"`
	Name      string            `json:"name"`
	Active    bool              `json:"active"`
	Score     float64           `json:"score"`
	Roles     []string          `json:"roles"`
	Attrs     map[string]string `json:"attrs"`
	Avatar    []byte            `json:"avatar"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// BenchmarkCBOR measures an encode and a decode of a typical object by the
// default codec, beside encoding/json's Marshal and Unmarshal of the same
// object in the same run (json carries this object as exactly, but would
// refuse NaN and infinities and replace invalid UTF-8).
func BenchmarkCBOR(b *testing.B) {
	u := codecBenchUser{
		ID:        1234567,
		Email:     "ada@example.com",
		Name:      "Ada Lovelace",
		Active:    true,
		Score:     98.6,
		Roles:     []string{"admin", "editor"},
		Attrs:     map[string]string{"locale": "en-GB", "plan": "pro"},
		Avatar:    []byte(strings.Repeat("\x89PNG", 8)),
		CreatedAt: time.Date(2021, 3, 4, 5, 6, 7, 890123000, time.UTC),
		UpdatedAt: time.Date(2024, 5, 9, 21, 49, 2, 630577000, time.FixedZone("", 2*3600)),
	}
	b.Run("tiercache-cbor", func(b *testing.B) {
		var c tier.CBOR[codecBenchUser]
		b.ReportAllocs()
		var size int
		for b.Loop() {
			data, err := c.Encode(u)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Decode(data); err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "bytes/value")
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for b.Loop() {
			data, err := json.Marshal(u)
			if err != nil {
				b.Fatal(err)
			}
			var got codecBenchUser
			if err := json.Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "bytes/value")
	})
}
