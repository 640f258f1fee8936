package tier

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Codec turns values into the bytes stored in Redis and back. It must be
// safe for concurrent use. Decode must return an error, never panic, on
// bytes it did not produce: such bytes are treated as a miss.
type Codec[V any] interface {
	Encode(v V) ([]byte, error)
	Decode(data []byte) (V, error)
}

// CBOR is the default Codec: RFC 8949 CBOR through fxamacker/cbor, with
// deterministic encoding. Strings round-trip whatever bytes they hold.
// Decoding accepts no tags and no indefinite
// lengths; the size of what it accepts is bounded by
// NodeConfig.MaxValueBytes, which is checked before anything is stored.
type CBOR[V any] struct{}

var (
	cborEnc cbor.EncMode
	cborDec cbor.DecMode
)

func init() {
	var err error
	if cborEnc, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err) // static options; cannot fail
	}
	cborDec, err = cbor.DecOptions{
		// Anything that encodes must decode: no element limits below the
		// byte limit that Set and fills enforce.
		MaxNestedLevels:  256,
		MaxArrayElements: 2147483647,
		MaxMapPairs:      2147483647,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
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
	var v V
	if err := cborDec.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("tier cbor decode: %w", err)
	}
	return v, nil
}
