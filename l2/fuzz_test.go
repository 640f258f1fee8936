package l2_test

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/l2"
)

// FuzzDecodeEnvelope proves DecodeEnvelope never panics, reports every
// failure as ErrCorrupt, accepts nothing that the CBOR library would not
// decode to the same envelope, and that whatever it accepts survives a
// re-encode and decode unchanged, with a canonical stored form.
// Seeds: testdata/fuzz/FuzzDecodeEnvelope.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := l2.DecodeEnvelope(b)
		if err != nil {
			if !errors.Is(err, l2.ErrCorrupt) {
				t.Fatalf("DecodeEnvelope(% x) error %v does not wrap ErrCorrupt", b, err)
			}
			return
		}
		var w struct {
			_       struct{} `cbor:",toarray"`
			Version uint64
			Key     []byte
			Data    []byte
		}
		if err := cbor.Unmarshal(b, &w); err != nil || w.Version != l2.EnvelopeVersion || string(w.Key) != e.Key || !bytes.Equal(w.Data, e.Data) {
			t.Fatalf("DecodeEnvelope(% x) = %+v, but the CBOR library reads %+v, %v", b, e, w, err)
		}
		re, err := l2.EncodeEnvelope(e.Key, e.Data)
		if err != nil {
			t.Fatalf("EncodeEnvelope of a decoded envelope: %v", err)
		}
		e2, err := l2.DecodeEnvelope(re)
		if err != nil {
			t.Fatalf("DecodeEnvelope(EncodeEnvelope(DecodeEnvelope(% x))) = %v", b, err)
		}
		// nil and empty Data are the same value to a codec.
		if e2.Key != e.Key || !bytes.Equal(e2.Data, e.Data) {
			t.Fatalf("re-encoding changed the envelope: %+v -> %+v", e, e2)
		}
		re2, err := l2.EncodeEnvelope(e2.Key, e2.Data)
		if err != nil || !bytes.Equal(re2, re) {
			t.Fatalf("encoding is not canonical: % x then % x (%v)", re, re2, err)
		}
	})
}

// FuzzKeysFor proves KeysFor is injective on (namespace, key), for raw and
// hashed keys alike, and that every value and flag share their hash tag.
// Seeds: testdata/fuzz/FuzzKeysFor.
func FuzzKeysFor(f *testing.F) {
	f.Fuzz(func(t *testing.T, ns1, key1, ns2, key2 string) {
		const prefix = "tc"
		k1, k2 := l2.KeysFor(prefix, ns1, key1), l2.KeysFor(prefix, ns2, key2)
		if v := l2.ValueKey(prefix, ns1, key1); v != k1.Value {
			t.Fatalf("ValueKey(%q, %q) = %q, KeysFor's Value %q", ns1, key1, v, k1.Value)
		}
		checkSameHashTag(t, prefix, k1)
		checkSameHashTag(t, prefix, k2)
		same := ns1 == ns2 && key1 == key2
		if same != (k1.Value == k2.Value) || same != (k1.Flag == k2.Flag) {
			t.Fatalf("KeysFor(%q, %q) = %q, KeysFor(%q, %q) = %q: equal names iff equal inputs violated",
				ns1, key1, k1.Value, ns2, key2, k2.Value)
		}
		if k1.Value == k2.Flag {
			t.Fatalf("a value name equals a flag name: %q", k1.Value)
		}
		// Re-splitting ns1 ":=" key1 at another ":=" gives a different
		// input whose unprefixed body would read the same: only the
		// namespace's length prefix tells them apart. The random pair
		// rarely hits these, so probe them directly.
		if body := ns1 + ":=" + key1; len(body) <= 512 {
			for j := strings.Index(body, ":="); j >= 0; {
				ns, key := body[:j], body[j+2:]
				if (ns != ns1 || key != key1) && l2.KeysFor(prefix, ns, key).Value == k1.Value {
					t.Fatalf("KeysFor(%q, %q) = KeysFor(%q, %q) = %q", ns1, key1, ns, key, k1.Value)
				}
				next := strings.Index(body[j+1:], ":=")
				if next < 0 {
					break
				}
				j += 1 + next
			}
		}
		// A key that is used verbatim appears verbatim; a longer one does not.
		if raw := len(key1) <= l2.RawKeyMax; raw != strings.HasSuffix(k1.Value, ":="+key1+"}") {
			t.Fatalf("KeysFor(%q, %q) = %q: raw=%v", ns1, key1, k1.Value, raw)
		}
	})
}

// FuzzParseStored proves ParseStored never panics, reports a value
// without a header as ErrNoHeader and every other failure as ErrCorrupt,
// and that whatever it accepts is an even list of pairs and an envelope
// that ends the input, which AppendStored writes back to bytes that parse
// to the same.
// Seeds: testdata/fuzz/FuzzParseStored.
func FuzzParseStored(f *testing.F) {
	f.Fuzz(func(t *testing.T, v string) {
		st, err := l2.ParseStored(v)
		if err != nil {
			if !errors.Is(err, l2.ErrCorrupt) && !errors.Is(err, l2.ErrNoHeader) {
				t.Fatalf("ParseStored(%q) error %v wraps neither ErrCorrupt nor ErrNoHeader", v, err)
			}
			if errors.Is(err, l2.ErrNoHeader) != (v == "" || v[0] != 'T') {
				t.Fatalf("ParseStored(%q) = %v: ErrNoHeader iff the header's 'T' is missing", v, err)
			}
			return
		}
		if len(st.Pairs)%2 != 0 || !strings.HasSuffix(v, st.Envelope) || st.Negative != (st.Envelope == "") {
			t.Fatalf("ParseStored(%q) = %+v: odd pairs, or an envelope that does not end the input", v, st)
		}
		again, err := l2.ParseStored(string(l2.AppendStored(nil, st)))
		if err != nil || again.Negative != st.Negative || again.Expiry != st.Expiry || again.Envelope != st.Envelope || strings.Join(again.Pairs, "\x00") != strings.Join(st.Pairs, "\x00") || len(again.Pairs) != len(st.Pairs) {
			t.Fatalf("ParseStored(AppendStored(%+v)) = %+v, %v", st, again, err)
		}
	})
}

// FuzzParseBrief proves that the decoder of the read script's one-string
// reply (a read without a value) never panics, reports every failure as
// ErrUnexpectedReply, accepts only Claimed with a clock and Busy, and
// reads back what it accepted once written in the script's form.
// Seeds: testdata/fuzz/FuzzParseBrief.
func FuzzParseBrief(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		r, err := l2.ParseBrief(s)
		if err != nil {
			if !errors.Is(err, l2.ErrUnexpectedReply) {
				t.Fatalf("ParseBrief(%q) error %v does not wrap ErrUnexpectedReply", s, err)
			}
			return
		}
		var again string
		switch r.State {
		case l2.Claimed:
			if r.Clock == "" || r.TTL != 0 || r.Failing {
				t.Fatalf("ParseBrief(%q) = %+v: a claim without a clock, or with a TTL or a failure mark", s, r)
			}
			again = "2" + bit(r.Stale) + r.Clock
		case l2.Busy:
			if r.Clock != "" || r.TTL%time.Millisecond != 0 {
				t.Fatalf("ParseBrief(%q) = %+v: Busy with a clock, or a TTL of a fraction of a ms", s, r)
			}
			again = "3" + bit(r.Stale) + bit(r.Failing) + strconv.FormatInt(r.TTL.Milliseconds(), 10)
		default:
			t.Fatalf("ParseBrief(%q) = %+v: a state a read without a value cannot have", s, r)
		}
		if back, err := l2.ParseBrief(again); err != nil || !cmp.Equal(back, r) {
			t.Fatalf("ParseBrief(%q) = %+v, %v; ParseBrief(%q) = %+v", again, back, err, s, r)
		}
	})
}

// bit writes b as the script does: "1" or "0".
func bit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
