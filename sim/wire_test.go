package sim

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/tiercache/tiercache/tier"
)

// The pipes' decoders take whatever bytes come without panicking, and
// what they accept encodes back to itself.
func FuzzWire(f *testing.F) {
	rd := read{Start: 12, End: 345, Version: 6, Key: 7, Node: 2, Inc: 1, Worker: 9, Source: tier.SourceL2, Shared: true, Permitted: true}
	w := write{Start: -3, End: 44, Version: 5, Key: 1, Node: 3, Inc: 2, Outcome: wrotePending, Kind: byGroup}
	f.Add(byte(0), appendRead(nil, rd))
	f.Add(byte(1), appendWrite(nil, w))
	f.Add(byte(2), appendCall(nil, 7, callBegin, []int{1, 2, 3}))
	f.Add(byte(3), appendReply(nil, 7, statusOK, []int64{4, -5}))
	f.Add(byte(4), appendFrame(nil, fRead, appendRead(nil, rd)))
	f.Add(byte(4), []byte{fRead, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, which byte, b []byte) {
		switch which % 5 {
		case 0:
			if rd, err := decodeRead(b); err == nil {
				if again, err := decodeRead(appendRead(nil, rd)); err != nil || again != rd {
					t.Fatalf("%+v encodes to %+v (%v)", rd, again, err)
				}
			}
		case 1:
			if w, err := decodeWrite(b); err == nil {
				if again, err := decodeWrite(appendWrite(nil, w)); err != nil || again != w {
					t.Fatalf("%+v encodes to %+v (%v)", w, again, err)
				}
			}
		case 2:
			if id, call, keys, err := decodeCall(b, 100); err == nil {
				id2, call2, keys2, err := decodeCall(appendCall(nil, id, call, keys), 100)
				if err != nil || id2 != id || call2 != call || !slicesEqual(keys, keys2) {
					t.Fatalf("call %d %q %v encodes to %d %q %v (%v)", id, call, keys, id2, call2, keys2, err)
				}
			}
		case 3:
			if id, st, vs, err := decodeReply(b); err == nil {
				id2, st2, vs2, err := decodeReply(appendReply(nil, id, st, vs))
				if err != nil || id2 != id || st2 != st || !slicesEqual(vs, vs2) {
					t.Fatalf("reply %d %d %v encodes to %d %d %v (%v)", id, st, vs, id2, st2, vs2, err)
				}
			}
		case 4:
			br := bufio.NewReader(bytes.NewReader(b))
			var buf []byte
			for {
				if _, p, err := readFrame(br, &buf); err != nil {
					return
				} else if len(p) > maxFrame {
					t.Fatalf("a frame of %d bytes", len(p))
				}
			}
		}
	})
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
