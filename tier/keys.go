package tier

import (
	"fmt"
	"reflect"
	"strconv"
	"unsafe"

	"github.com/tiercache/tiercache/l1"
)

// keyer turns keys into their string form (the name in Redis and on the bus)
// and into their L1 hash, which must equal l1.Hash of the string form.
type keyer[K comparable] struct {
	seed    uint64
	maxKey  int
	custom  bool // str is Config.Key, which may panic
	str     func(K) string
	hashRaw func(seed uint64, k K) uint64 // nil: hash str(k)
}

func newKeyer[K comparable](namespace string, maxKey int, custom func(K) string) (keyer[K], error) {
	kr := keyer[K]{seed: l1.Seed(namespace), maxKey: maxKey}
	if custom != nil {
		kr.str, kr.custom = custom, true
		return kr, nil
	}
	// The unsafe conversions below are sound: each is chosen by K's kind, so
	// K's memory layout is exactly that of the type it is read as.
	switch t := reflect.TypeFor[K](); t.Kind() {
	case reflect.String:
		kr.str = func(k K) string { return *(*string)(unsafe.Pointer(&k)) }
	case reflect.Int:
		kr.setSigned(func(k K) int64 { return int64(*(*int)(unsafe.Pointer(&k))) })
	case reflect.Int8:
		kr.setSigned(func(k K) int64 { return int64(*(*int8)(unsafe.Pointer(&k))) })
	case reflect.Int16:
		kr.setSigned(func(k K) int64 { return int64(*(*int16)(unsafe.Pointer(&k))) })
	case reflect.Int32:
		kr.setSigned(func(k K) int64 { return int64(*(*int32)(unsafe.Pointer(&k))) })
	case reflect.Int64:
		kr.setSigned(func(k K) int64 { return *(*int64)(unsafe.Pointer(&k)) })
	case reflect.Uint:
		kr.setUnsigned(func(k K) uint64 { return uint64(*(*uint)(unsafe.Pointer(&k))) })
	case reflect.Uint8:
		kr.setUnsigned(func(k K) uint64 { return uint64(*(*uint8)(unsafe.Pointer(&k))) })
	case reflect.Uint16:
		kr.setUnsigned(func(k K) uint64 { return uint64(*(*uint16)(unsafe.Pointer(&k))) })
	case reflect.Uint32:
		kr.setUnsigned(func(k K) uint64 { return uint64(*(*uint32)(unsafe.Pointer(&k))) })
	case reflect.Uint64:
		kr.setUnsigned(func(k K) uint64 { return *(*uint64)(unsafe.Pointer(&k)) })
	case reflect.Uintptr:
		kr.setUnsigned(func(k K) uint64 { return uint64(*(*uintptr)(unsafe.Pointer(&k))) })
	default:
		return kr, fmt.Errorf("%w: key type %s needs Config.Key (string and integer kinds have a default)", ErrConfig, t)
	}
	return kr, nil
}

func (kr *keyer[K]) setSigned(get func(K) int64) {
	kr.str = func(k K) string { return strconv.FormatInt(get(k), 10) }
	kr.hashRaw = func(seed uint64, k K) uint64 {
		var buf [24]byte
		return l1.HashBytes(seed, strconv.AppendInt(buf[:0], get(k), 10))
	}
}

func (kr *keyer[K]) setUnsigned(get func(K) uint64) {
	kr.str = func(k K) string { return strconv.FormatUint(get(k), 10) }
	kr.hashRaw = func(seed uint64, k K) uint64 {
		var buf [24]byte
		return l1.HashBytes(seed, strconv.AppendUint(buf[:0], get(k), 10))
	}
}

// hash returns k's L1 hash, and false if k is not a valid key. It allocates
// nothing for string and integer kinds; with Config.Key it costs what Key
// costs.
func (kr *keyer[K]) hash(k K) (uint64, bool) {
	if kr.hashRaw != nil {
		return kr.hashRaw(kr.seed, k), true // an integer's form is never empty or long
	}
	s, err := kr.form(k)
	if err != nil || len(s) == 0 || len(s) > kr.maxKey {
		return 0, false
	}
	return l1.Hash(kr.seed, s), true
}

// resolve returns k's string form and hash, or the error that makes k
// invalid.
func (kr *keyer[K]) resolve(k K) (string, uint64, error) {
	s, err := kr.form(k)
	switch {
	case err != nil:
		return "", 0, err
	case len(s) == 0:
		return "", 0, ErrEmptyKey
	case len(s) > kr.maxKey:
		return "", 0, fmt.Errorf("%w: %d bytes, limit %d", ErrKeyTooLarge, len(s), kr.maxKey)
	}
	return s, l1.Hash(kr.seed, s), nil
}

// form returns k's string form; a panic in Config.Key is an error wrapping
// ErrPanic.
func (kr *keyer[K]) form(k K) (s string, err error) {
	if !kr.custom {
		return kr.str(k), nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: Key: %v", ErrPanic, r)
		}
	}()
	return kr.str(k), nil
}
