package bus_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tiercache/tiercache/bus"
)

// testOrigin is a recognisable origin: 0x01..0x10.
var testOrigin = bus.NodeID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// wire builds raw messages field by field, so that the rejection tests can
// forge exactly the layout they mean, independently of Encode.
type wire []byte

// header returns magic, version, kind, testOrigin, seq and a zero clock.
func header(ver, kind byte, seq uint64) wire {
	w := wire{'T', ver, kind}
	w = append(w, testOrigin[:]...)
	w = binary.BigEndian.AppendUint64(w, seq)
	return binary.BigEndian.AppendUint64(w, 0)
}

func (w wire) uvarint(v uint64) wire { return binary.AppendUvarint(w, v) }

// str appends a length-prefixed string.
func (w wire) str(s string) wire { return append(w.uvarint(uint64(len(s))), s...) }

func (w wire) raw(b ...byte) wire { return append(w, b...) }

// set returns a copy of w with byte i replaced.
func (w wire) set(i int, b byte) wire {
	c := append(wire(nil), w...)
	c[i] = b
	return c
}

// keysMessage is a message of several namespaces, with keys that are binary,
// NUL-laden, non-UTF-8, multi-byte UTF-8 and long.
func keysMessage() *bus.Message {
	return &bus.Message{
		Kind:   bus.KindKeys,
		Origin: testOrigin,
		Seq:    42,
		Groups: []bus.Group{
			{Namespace: "users", Keys: []string{"alice", "bob", "\x00", "a\x00b", "\xff\xfe\xfd"}},
			{Namespace: "ns\x00with\x00nul", Keys: []string{"k"}},
			{Namespace: "ünïcode", Keys: []string{"日本語", strings.Repeat("x", 300)}},
			{Namespace: "n", Keys: []string{string([]byte{0x80, 0x81, 0x00, 0x7f})}},
		},
	}
}

// maxKeyMessage is a message of exactly MaxMessageBytes, with one key of
// MaxKeyBytes: one group "n" of two keys, 38 bytes of framing in all
// (27 header, 4 for the group and namespace, 3 per key length, 1 for the
// empty count of invalidated groups).
func maxKeyMessage() *bus.Message {
	k1 := strings.Repeat("a", bus.MaxKeyBytes)
	k2 := strings.Repeat("b", bus.MaxMessageBytes-46-bus.MaxKeyBytes)
	return &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: 1, Groups: []bus.Group{{Namespace: "n", Keys: []string{k1, k2}}}}
}

// roundTripCases are messages that Encode must accept and Decode restore.
func roundTripCases() []struct {
	name string
	m    *bus.Message
} {
	return []struct {
		name string
		m    *bus.Message
	}{
		{"keys of several namespaces with binary keys", keysMessage()},
		{"flush", &bus.Message{Kind: bus.KindFlush, Origin: testOrigin, Seq: 7}},
		{"flush with its clock", &bus.Message{Kind: bus.KindFlush, Origin: testOrigin, Seq: 8, SentAt: time.UnixMicro(1_765_000_000_123_456).UTC()}},
		{"invalidated groups", &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: 3, InvalidGroups: []string{"author:200", "\x00ns\x00users"}}},
		{"keys and invalidated groups", &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: 4,
			Groups: []bus.Group{{Namespace: "n", Keys: []string{"k"}}}, InvalidGroups: []string{"g"}}},
		{"keys with no groups", &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: 1}},
		{"a group with no keys", &bus.Message{Kind: bus.KindKeys, Seq: 2, Groups: []bus.Group{{Namespace: "empty"}}}},
		{"largest seq and clock", &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: ^uint64(0), SentAt: time.UnixMicro(math.MaxInt64).UTC(), Groups: []bus.Group{{Namespace: "n", Keys: []string{"k"}}}}},
		{"exactly MaxMessageBytes with a MaxKeyBytes key", maxKeyMessage()},
	}
}

// TestEncodeDecodeRoundTrip proves Decode(Encode(m)) restores every field of
// m, for both kinds, binary and NUL keys, and messages at the size limits.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, tc := range roundTripCases() {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.m.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := bus.Decode(b)
			if err != nil {
				t.Fatalf("Decode(Encode(m)): %v", err)
			}
			if diff := cmp.Diff(tc.m, got, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("Decode(Encode(m)) differs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEncodeLayout proves Encode writes the documented wire layout: magic,
// version 2, kind, origin, big-endian seq and clock, then the uvarint-framed
// groups.
func TestEncodeLayout(t *testing.T) {
	m := &bus.Message{Kind: bus.KindKeys, Origin: testOrigin, Seq: 0x0102030405060708, Groups: []bus.Group{
		{Namespace: "ns", Keys: []string{"k1", "\x00"}},
		{Namespace: "b", Keys: []string{"z"}},
	}, InvalidGroups: []string{"g1"}}
	want := header(2, 1, 0x0102030405060708).uvarint(2).
		str("ns").uvarint(2).str("k1").str("\x00").
		str("b").uvarint(1).str("z").
		uvarint(1).str("g1")
	got, err := m.Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Encode = % x\nwant     % x", got, []byte(want))
	}
	flush, err := (&bus.Message{Kind: bus.KindFlush, Origin: testOrigin, Seq: 9}).Encode()
	if err != nil {
		t.Fatalf("Encode flush: %v", err)
	}
	if want := header(2, 2, 9); !bytes.Equal(flush, want) {
		t.Fatalf("Encode flush = % x, want % x", flush, []byte(want))
	}
}

// TestSplitWithSeqEqualsEncode proves that head + 8-byte big-endian seq +
// 8-byte big-endian clock + body, which the publishing script assembles, is
// exactly Encode's output, that head is HeadLen bytes, and that Split
// ignores Seq and SentAt.
func TestSplitWithSeqEqualsEncode(t *testing.T) {
	for _, tc := range roundTripCases() {
		t.Run(tc.name, func(t *testing.T) {
			head, body, err := tc.m.Split()
			if err != nil {
				t.Fatalf("Split: %v", err)
			}
			if len(head) != bus.HeadLen {
				t.Fatalf("len(head) = %d, want HeadLen %d", len(head), bus.HeadLen)
			}
			joined := binary.BigEndian.AppendUint64(append([]byte(nil), head...), tc.m.Seq)
			var sent uint64
			if !tc.m.SentAt.IsZero() {
				sent = uint64(tc.m.SentAt.UnixMicro())
			}
			joined = binary.BigEndian.AppendUint64(joined, sent)
			joined = append(joined, body...)
			enc, err := tc.m.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(joined, enc) {
				t.Fatalf("head+seq+body != Encode:\n% x\n% x", joined, enc)
			}
			other := *tc.m
			other.Seq = tc.m.Seq ^ 0xdeadbeef
			other.SentAt = time.UnixMicro(1234567)
			head2, body2, err := other.Split()
			if err != nil || !bytes.Equal(head2, head) || !bytes.Equal(body2, body) {
				t.Fatalf("Split depends on Seq or SentAt: % x % x (%v)", head2, body2, err)
			}
		})
	}
}

// TestDecodeRejectsMalformed proves Decode rejects every malformed input
// with an error wrapping ErrMalformed and no message.
func TestDecodeRejectsMalformed(t *testing.T) {
	valid, err := keysMessage().Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	overKey := strings.Repeat("k", bus.MaxKeyBytes+1)
	big := maxKeyMessage()
	big.Groups[0].Keys[1] += "b" // one byte over MaxMessageBytes, layout otherwise valid
	bigWire := header(2, 1, 1).uvarint(1).str("n").uvarint(2).str(big.Groups[0].Keys[0]).str(big.Groups[0].Keys[1]).uvarint(0)
	if len(bigWire) != bus.MaxMessageBytes+1 {
		t.Fatalf("test setup: oversize message is %d bytes, want %d", len(bigWire), bus.MaxMessageBytes+1)
	}
	cases := []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"magic only", []byte{'T'}},
		{"header without seq", header(2, 1, 0)[:bus.HeadLen]},
		{"clock past the last representable time", header(2, 2, 1).set(bus.HeadLen+8, 0x80)},
		{"one byte short of a header", header(2, 2, 0)[:bus.HeadLen+bus.TailLen-1]},
		{"bad magic", header(2, 2, 1).set(0, 'X')},
		{"lower-case magic", header(2, 2, 1).set(0, 't')},
		{"version 0", header(0, 2, 1)},
		{"version 1 flush", header(1, 2, 1)},
		{"version 3 flush", header(3, 2, 1)},
		{"version 3 keys", header(3, 1, 1).uvarint(1).str("n").uvarint(1).str("k")},
		{"kind 0", header(2, 0, 1)},
		{"kind 3", header(2, 3, 1).uvarint(0)},
		{"kind 255", header(2, 255, 1)},
		{"keys without body", header(2, 1, 1)},
		{"truncated body", valid[:len(valid)-1]},
		{"truncated in a length", header(2, 1, 1).uvarint(1).str("n").uvarint(1).raw(0x80)},
		{"varint overflow", header(2, 1, 1).raw(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"forged group count", header(2, 1, 1).uvarint(1 << 62).str("n").uvarint(1).str("k")},
		{"forged max group count", header(2, 1, 1).uvarint(^uint64(0))},
		{"forged key count", header(2, 1, 1).uvarint(1).str("n").uvarint(1 << 40).str("k")},
		{"group count one past the bytes left", header(2, 1, 1).uvarint(4).str("n").uvarint(0)},
		{"forged namespace length", header(2, 1, 1).uvarint(1).uvarint(1 << 50).raw('n')},
		{"forged key length", header(2, 1, 1).uvarint(1).str("n").uvarint(1).uvarint(1 << 50).raw('k')},
		{"key length past the end", header(2, 1, 1).uvarint(1).str("n").uvarint(1).uvarint(5).raw('k')},
		{"zero-length key", header(2, 1, 1).uvarint(1).str("n").uvarint(1).uvarint(0)},
		{"zero-length key after a good one", header(2, 1, 1).uvarint(1).str("n").uvarint(2).str("k").uvarint(0)},
		{"zero-length namespace", header(2, 1, 1).uvarint(1).uvarint(0).uvarint(1).str("k")},
		{"namespace of 64 KiB", header(2, 1, 1).uvarint(1).str(strings.Repeat("n", 64<<10)).uvarint(1).str("k")},
		{"key over MaxKeyBytes", header(2, 1, 1).uvarint(1).str("n").uvarint(1).str(overKey)},
		{"trailing byte after keys", append(append([]byte(nil), valid...), 0)},
		{"trailing byte after flush", header(2, 2, 1).raw(0)},
		{"trailing group count after flush", header(2, 2, 1).uvarint(0)},
		{"one byte over MaxMessageBytes", bigWire},
		{"garbage", []byte("this is not a bus message at all, just text")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := bus.Decode(tc.b)
			if !errors.Is(err, bus.ErrMalformed) {
				t.Fatalf("Decode(%.64q) = %+v, %v; want an error wrapping ErrMalformed", tc.b, m, err)
			}
			if m != nil {
				t.Fatalf("Decode returned a message with its error: %+v", m)
			}
		})
	}
}

// TestDecodeForgedCountsDoNotAllocate proves a forged count or length cannot
// make Decode allocate beyond its input: a 40-byte message claiming 2^62
// groups, 2^40 keys or a 2^50-byte key costs a few allocations of a few
// hundred bytes, not gigabytes.
func TestDecodeForgedCountsDoNotAllocate(t *testing.T) {
	forged := map[string][]byte{
		"groups":           header(2, 1, 1).uvarint(1 << 62).str("n").uvarint(1).str("k"),
		"keys":             header(2, 1, 1).uvarint(1).str("n").uvarint(1 << 40).str("k"),
		"key length":       header(2, 1, 1).uvarint(1).str("n").uvarint(1).uvarint(1 << 50).raw('k'),
		"namespace length": header(2, 1, 1).uvarint(1).uvarint(1 << 50).raw('n'),
		// Counts that fit the bytes left, over a body of zeros: the first
		// group's empty namespace stops it.
		"count equal to bytes left": header(2, 1, 1).uvarint(64).raw(make([]byte, 64)...),
	}
	for name, b := range forged {
		t.Run(name, func(t *testing.T) {
			const runs = 200
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			allocs := testing.AllocsPerRun(runs, func() {
				if _, err := bus.Decode(b); !errors.Is(err, bus.ErrMalformed) {
					t.Fatalf("Decode: %v, want ErrMalformed", err)
				}
			})
			runtime.ReadMemStats(&after)
			if allocs > 8 {
				t.Errorf("%v allocations per Decode of %d bytes, want at most 8", allocs, len(b))
			}
			// AllocsPerRun makes runs+1 calls.
			if perRun := (after.TotalAlloc - before.TotalAlloc) / (runs + 1); perRun > 4<<10 {
				t.Errorf("%d bytes allocated per Decode of %d bytes, want at most 4 KiB", perRun, len(b))
			}
		})
	}
}

// TestSplitRejects proves Split (and so Encode and every publish) refuses
// what Decode would refuse: keys on a flush, empty or oversize keys and
// namespaces, unknown kinds, and messages over MaxMessageBytes.
func TestSplitRejects(t *testing.T) {
	over := maxKeyMessage()
	over.Groups[0].Keys[1] += "b"
	cases := []struct {
		name string
		m    *bus.Message
	}{
		{"flush with groups", &bus.Message{Kind: bus.KindFlush, Groups: []bus.Group{{Namespace: "n", Keys: []string{"k"}}}}},
		{"flush with an empty group", &bus.Message{Kind: bus.KindFlush, Groups: []bus.Group{{Namespace: "n"}}}},
		{"empty key", &bus.Message{Kind: bus.KindKeys, Groups: []bus.Group{{Namespace: "n", Keys: []string{"k", ""}}}}},
		{"empty namespace", &bus.Message{Kind: bus.KindKeys, Groups: []bus.Group{{Namespace: "", Keys: []string{"k"}}}}},
		{"namespace of 64 KiB", &bus.Message{Kind: bus.KindKeys, Groups: []bus.Group{{Namespace: strings.Repeat("n", 64<<10), Keys: []string{"k"}}}}},
		{"key over MaxKeyBytes", &bus.Message{Kind: bus.KindKeys, Groups: []bus.Group{{Namespace: "n", Keys: []string{strings.Repeat("k", bus.MaxKeyBytes+1)}}}}},
		{"one byte over MaxMessageBytes", over},
		{"many keys over MaxMessageBytes", &bus.Message{Kind: bus.KindKeys, Groups: []bus.Group{
			{Namespace: "a", Keys: []string{strings.Repeat("1", bus.MaxKeyBytes), strings.Repeat("2", bus.MaxKeyBytes)}},
			{Namespace: "b", Keys: []string{"3"}},
		}}},
		{"kind 0", &bus.Message{}},
		{"kind 3", &bus.Message{Kind: 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			head, body, err := tc.m.Split()
			if err == nil {
				t.Fatalf("Split = %d+%d bytes, nil; want an error", len(head), len(body))
			}
			if head != nil || body != nil {
				t.Fatalf("Split returned bytes with its error")
			}
			if b, err := tc.m.Encode(); err == nil {
				t.Fatalf("Encode = %d bytes, nil; want an error", len(b))
			}
		})
	}
}
