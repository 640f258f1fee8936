package tier

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Codec turns values into the bytes stored in Redis and back.
//
// The node that fetched a value does not serve the value its Fetch returned
// but the value the codec decodes from its own encoding, as every other node
// does, so every node of the fleet serves the same value even with a lossy
// codec. What a codec drops is dropped everywhere, the fetching node
// included, from the first read on.
//
// A Codec must be safe for concurrent use, and its Decode must return an
// error, never panic, on bytes it did not produce (written by another
// version of the codec, or damaged): such bytes are treated as a miss,
// removed and refetched. Decode should give back what Encode was given; for
// a value it cannot carry, Encode should return an error, which fails the
// Set or the fill at once, rather than write bytes that decode to another
// value or to none (which would make every read of the key a miss). CBOR's
// doc lists where it falls short of this.
//
// No codec carries channels or funcs to another process, nor a
// time.Location, which points at zone rules loaded in this one: what travels
// is the UTC offset it gives an instant, so a time in Europe/Paris comes back
// in a zone with Paris's offset at that instant but not Paris's name or
// rules. Unexported struct fields are out of reach of a codec that works by
// reflection, as CBOR does: they travel only if their type writes them
// itself (through encoding.BinaryMarshaler and encoding.BinaryUnmarshaler,
// for CBOR).
type Codec[V any] interface {
	Encode(v V) ([]byte, error)
	Decode(data []byte) (V, error)
}

// CBOR is the default Codec: RFC 8949 CBOR through fxamacker/cbor, encoded
// deterministically (the same value always gives the same bytes). Decode
// gives back what Encode was given, exactly, for:
//
//   - booleans and every integer type over its whole range; big.Int and
//     *big.Int of any size (beyond 64 bits as bignums, tags 2 and 3);
//   - float64 and float32 bit for bit, -0 and ±Inf included, except that
//     every NaN comes back as the one quiet NaN (sign and payload dropped);
//   - strings, whatever bytes they hold (invalid UTF-8 included);
//   - []byte, slices and maps: nil as nil, empty as empty; arrays;
//   - pointers (nil as nil) and structs, nested or embedded, by their
//     exported fields; the fields of embedded structs are promoted as
//     encoding/json promotes them, and a name that two of them give at the
//     same depth is dropped, as there;
//   - time.Duration;
//   - time.Time to the nanosecond with its UTC offset, written as RFC 3339
//     text under tag 0. The zero Time comes back zero, and a time at offset
//     zero comes back in UTC. Any other offset comes back as time.Local if
//     Local has that offset at that instant, else as an unnamed fixed zone
//     of that offset: a time in a named location (Europe/Paris) keeps its
//     instant, offset and wall clock but not the location's name;
//   - types that implement encoding.BinaryMarshaler and
//     encoding.BinaryUnmarshaler (netip.Addr), as their methods carry them.
//
// And not for:
//
//   - unexported struct fields, which come back zero; so do fields tagged
//     `cbor:"-"` or, lacking a cbor tag, `json:"-"`, and empty fields
//     tagged omitempty or omitzero (a non-nil empty slice or map so tagged
//     comes back nil);
//   - a non-nil *time.Time that points at the zero Time: the zero Time is
//     written as null, which comes back as a nil pointer;
//   - a time.Time whose offset has seconds (local mean time, which named
//     locations give instants before they adopted a standard offset: Paris
//     before 1911): RFC 3339 writes the offset to the minute, so it comes
//     back at the same wall clock with the seconds of its offset cut, and
//     its instant moves by them;
//   - a time.Time whose year at its own offset is outside 0000 to 9999, or
//     whose offset is 25 hours or more: Encode writes it, Decode refuses it;
//   - values held in interface types, which come back as the types CBOR
//     decodes into an empty interface (uint64 or int64, float64, string,
//     []byte, []any, map[any]any, big.Int, time.Time), not the types they
//     had;
//   - two pointers to one value, which come back as two values;
//   - a map with more than one NaN key (each NaN is a key of its own): it
//     comes back whole, but its entries are written in no fixed order, so
//     its encoding is not deterministic;
//   - values nested more than 256 levels deep (arrays, maps, structs and
//     tags count): Encode writes them, Decode refuses them;
//   - channels, funcs and complex numbers, for which Encode returns an error.
//
// A value that refers to itself (a cycle of pointers) must not be given to
// CBOR: the encoder follows the cycle until the goroutine's stack is
// exhausted, which ends the process.
//
// Decode accepts what Encode writes and little else: definite lengths only;
// no tags but 0 before a time's text and 2 or 3 before an integer beyond 64
// bits in its shortest form; a time.Time only as tagged text or null; 256
// levels of nesting at most. The size of what it accepts is bounded by
// NodeConfig.MaxValueBytes, which is checked before anything is stored.
type CBOR[V any] struct{}

var (
	cborEnc cbor.EncMode
	cborDec cbor.DecMode
)

func init() {
	// Core deterministic encoding: shortest integers, lengths and floats,
	// map keys sorted, definite lengths, every NaN as 0xf97e00.
	enc := cbor.CoreDetEncOptions()
	enc.Time = cbor.TimeRFC3339Nano // nanoseconds and the offset
	// Tag 0 tells a time's text from any other text, so that Decode can
	// refuse a time written any other way (epoch numbers are whole seconds
	// or lossy floats, and decode into time.Local).
	enc.TimeTag = cbor.EncTagRequired
	// An integer as an integer; a bignum tag only when it does not fit.
	enc.BigIntConvert = cbor.BigIntConvertShortest
	// nil as null, empty as empty: null decodes to nil, [] and {} to empty.
	enc.NilContainers = cbor.NilContainerAsNull
	var err error
	if cborEnc, err = enc.EncMode(); err != nil {
		panic(err) // static options; cannot fail
	}
	cborDec, err = cbor.DecOptions{
		// Anything that encodes must decode: no element limits below the
		// byte limit that Set and fills enforce.
		MaxNestedLevels:  256,
		MaxArrayElements: 2147483647,
		MaxMapPairs:      2147483647,
		IndefLength:      cbor.IndefLengthForbidden,
		// Tags are allowed through to the decoder so that times and big
		// integers decode; checkTags then refuses every tag Encode does
		// not write.
		TagsMd:    cbor.TagsAllowed,
		BignumTag: cbor.BignumTagAllowed,
		TimeTag:   cbor.DecTagRequired,
		// A Go string may hold any bytes, and encodes as CBOR text as it is:
		// accept it back as it is.
		UTF8: cbor.UTF8DecodeInvalid,
	}.DecMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
}

// Encode implements Codec.
func (CBOR[V]) Encode(v V) ([]byte, error) {
	b, err := cborEnc.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("tier cbor encode: %w", err)
	}
	return b, nil
}

// Decode implements Codec.
func (CBOR[V]) Decode(data []byte) (V, error) {
	var zero V
	// A string or a []byte, as Encode writes it (the whole of data one
	// string of definite length), without the decoder: it would allocate
	// the V it decodes into, once per value read (FuzzCBORFastPath holds
	// the two to the same answers).
	switch any(zero).(type) {
	case string:
		if b, ok := cborString(data, cborTextString); ok {
			return any(string(b)).(V), nil
		}
	case []byte:
		if b, ok := cborString(data, cborByteString); ok {
			return any(append(make([]byte, 0, len(b)), b...)).(V), nil
		}
	}
	return cborDecode[V](data)
}

// cborDecode is Decode through the CBOR decoder.
func cborDecode[V any](data []byte) (V, error) {
	var v V
	if err := cborDec.Unmarshal(data, &v); err != nil {
		var zero V
		return zero, fmt.Errorf("tier cbor decode: %w", err)
	}
	if err := checkTags(data); err != nil {
		var zero V
		return zero, fmt.Errorf("tier cbor decode: %w", err)
	}
	return v, nil
}

// CBOR major types that checkTags tells apart.
const (
	cborByteString = 2
	cborTextString = 3
	cborTag        = 6
)

var errCBORHead = errors.New("truncated or indefinite CBOR head")

// checkTags returns an error unless every tag in data is one that Encode
// writes: 0 before a text string (a time.Time), 2 or 3 before a byte string
// of more than 8 bytes with no leading zero (an integer that does not fit 64
// bits, in the shortest form). data is a single item that Unmarshal has
// accepted, so every head of it is met in order by skipping string contents;
// reads are bounded all the same.
func checkTags(data []byte) error {
	for i := 0; i < len(data); {
		major, arg, n := cborHead(data[i:])
		if n == 0 {
			return errCBORHead
		}
		i += n
		switch major {
		case cborByteString, cborTextString:
			if arg > uint64(len(data)-i) {
				return errCBORHead
			}
			i += int(arg)
		case cborTag:
			next, length, hn := cborHead(data[i:])
			switch {
			case hn == 0:
				return errCBORHead
			case arg == 0 && next == cborTextString:
			case (arg == 2 || arg == 3) && next == cborByteString && length > 8 &&
				length <= uint64(len(data)-i-hn) && data[i+hn] != 0:
			default:
				return fmt.Errorf("CBOR tag %d before major type %d is not written by this codec", arg, next)
			}
		}
	}
	return nil
}

// cborString returns the contents of the string of the given major type
// that is the whole of data, and false if data is anything else.
func cborString(data []byte, major byte) ([]byte, bool) {
	m, n, hn := cborHead(data)
	if hn == 0 || m != major || n != uint64(len(data)-hn) {
		return nil, false
	}
	return data[hn:], true
}

// cborHead returns the major type and argument of the item that b starts
// with, and the length of its head; n is 0 if b does not start with a
// complete head of definite length.
func cborHead(b []byte) (major byte, arg uint64, n int) {
	if len(b) == 0 {
		return 0, 0, 0
	}
	major, info := b[0]>>5, b[0]&0x1f
	switch {
	case info < 24:
		return major, uint64(info), 1
	case info <= 27:
		size := 1 << (info - 24) // 1, 2, 4 or 8 bytes follow
		if len(b) < 1+size {
			return 0, 0, 0
		}
		for _, c := range b[1 : 1+size] {
			arg = arg<<8 | uint64(c)
		}
		return major, arg, 1 + size
	}
	return 0, 0, 0 // reserved, or an indefinite length
}
