package l2_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/l2"
)

// TestEnvelope_RoundTrip proves DecodeEnvelope(EncodeEnvelope(k, d)) gives
// back k and d, for binary and invalid-UTF-8 keys and empty data too.
func TestEnvelope_RoundTrip(t *testing.T) {
	tests := []struct {
		name string
		env  l2.Envelope
	}{
		{"plain", l2.Envelope{Key: "user:42", Data: []byte(`{"name":"x"}`)}},
		{"empty key", l2.Envelope{Key: "", Data: []byte("d")}},
		{"nil data", l2.Envelope{Key: "k", Data: nil}},
		{"empty data", l2.Envelope{Key: "k", Data: []byte{}}},
		{"binary key", l2.Envelope{Key: "\x00\x01\x02\xff", Data: []byte{0, 0xff}}},
		{"invalid utf-8 key", l2.Envelope{Key: "\xc3\x28\xa0\xa1\xed\xa0\x80", Data: []byte("v")}},
		{"cbor-looking data", l2.Envelope{Key: "k", Data: []byte{0x83, 0x02, 0x41, 0x6b, 0x40}}},
		{"long key", l2.Envelope{Key: strings.Repeat("k", 10000), Data: []byte("v")}},
		{"large data", l2.Envelope{Key: "k", Data: bytes.Repeat([]byte{0xab}, 1<<20)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := l2.EncodeEnvelope(tc.env.Key, tc.env.Data)
			if err != nil {
				t.Fatalf("EncodeEnvelope: %v", err)
			}
			got, err := l2.DecodeEnvelope(b)
			if err != nil {
				t.Fatalf("DecodeEnvelope(EncodeEnvelope(...)): %v", err)
			}
			// bytes.Equal: nil and empty data are the same value to a
			// codec, and a 1 MiB slice needs no element-wise diff.
			if diff := cmp.Diff(tc.env, got, cmp.Comparer(bytes.Equal)); diff != "" {
				t.Errorf("round trip mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEncodeEnvelope_Format proves the stored form is the documented CBOR
// array [1, key, data] with the key as a byte string.
func TestEncodeEnvelope_Format(t *testing.T) {
	b, err := l2.EncodeEnvelope("k", []byte("v"))
	if err != nil {
		t.Fatalf("EncodeEnvelope: %v", err)
	}
	want := []byte{0x83, 0x01, 0x41, 'k', 0x41, 'v'}
	if !bytes.Equal(b, want) {
		t.Fatalf("EncodeEnvelope(k, v) = % x; want % x", b, want)
	}
	if l2.EnvelopeVersion != 1 {
		t.Fatalf("EnvelopeVersion = %d; this test pins version 1", l2.EnvelopeVersion)
	}
}

// mustCBOR marshals v with fxamacker/cbor's defaults.
func mustCBOR(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatalf("cbor.Marshal(%#v): %v", v, err)
	}
	return b
}

// TestDecodeEnvelope_Corrupt proves every malformed or foreign input is
// reported as an error wrapping ErrCorrupt, with a zero Envelope.
func TestDecodeEnvelope_Corrupt(t *testing.T) {
	valid, err := l2.EncodeEnvelope("key", []byte("data"))
	if err != nil {
		t.Fatalf("EncodeEnvelope: %v", err)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"garbage text", []byte("this is not cbor at all")},
		{"garbage bytes", []byte{0xff, 0xff, 0xff, 0xff}},
		{"truncated by one", valid[:len(valid)-1]},
		{"truncated header", valid[:1]},
		{"truncated mid key", valid[:3]},
		{"trailing byte", append(append([]byte{}, valid...), 0x00)},
		{"two envelopes", append(append([]byte{}, valid...), valid...)},
		{"version 2", mustCBOR(t, []any{uint64(2), []byte("key"), []byte("data")})},
		{"version 0", mustCBOR(t, []any{uint64(0), []byte("key"), []byte("data")})},
		{"negative version", mustCBOR(t, []any{int64(-1), []byte("key"), []byte("data")})},
		{"map", mustCBOR(t, map[string]any{"Version": 1, "Key": []byte("key"), "Data": []byte("data")})},
		{"map by index", mustCBOR(t, map[int]any{0: 1, 1: []byte("key"), 2: []byte("data")})},
		{"two elements", mustCBOR(t, []any{uint64(1), []byte("key")})},
		{"four elements", mustCBOR(t, []any{uint64(1), []byte("key"), []byte("data"), []byte("x")})},
		{"empty array", []byte{0x80}},
		{"bare integer", []byte{0x01}},
		{"bare byte string", mustCBOR(t, []byte("data"))},
		{"data is an integer", mustCBOR(t, []any{uint64(1), []byte("key"), 7})},
		{"tagged envelope", append([]byte{0xd9, 0xd9, 0xf7}, valid...)}, // self-describe tag 55799
		{"indefinite array", []byte{0x9f, 0x01, 0x41, 'k', 0x41, 'v', 0xff}},
		{"indefinite data", []byte{0x83, 0x01, 0x41, 'k', 0x5f, 0x41, 'v', 0xff}},
		{"huge declared length", []byte{0x83, 0x01, 0x41, 'k', 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"deep nesting", bytes.Repeat([]byte{0x81}, 100)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l2.DecodeEnvelope(tc.in)
			if !errors.Is(err, l2.ErrCorrupt) {
				t.Fatalf("DecodeEnvelope(% x) error = %v; want ErrCorrupt", tc.in, err)
			}
			if diff := cmp.Diff(l2.Envelope{}, got); diff != "" {
				t.Errorf("DecodeEnvelope returned a non-zero Envelope with its error (-want +got):\n%s", diff)
			}
		})
	}
}
