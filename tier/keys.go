package tier

import (
	"fmt"
	"reflect"
	"strconv"
	"time"
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
	case reflect.Struct:
		enc, err := appenderOf(t)
		if err != nil {
			return kr, fmt.Errorf("%w: key type %s needs Config.Key: %w", ErrConfig, t, err)
		}
		kr.str = func(k K) string { return string(enc(nil, reflect.ValueOf(&k).Elem())) }
	default:
		return kr, fmt.Errorf("%w: key type %s needs Config.Key (string, integer and struct kinds have a default)", ErrConfig, t)
	}
	return kr, nil
}

// appender appends the canonical form of a value to b.
type appender func(b []byte, v reflect.Value) []byte

var timeType = reflect.TypeFor[time.Time]()

// appenderOf returns the canonical form of a key type made of strings,
// integers, booleans, times and structs of them: injective, because each
// field's form ends itself (a string is prefixed with its length, a number
// or a time ends in ';', a boolean is one byte) and fields come in their
// order. Two times are the same key if they are the same instant.
func appenderOf(t reflect.Type) (appender, error) {
	if t == timeType {
		return func(b []byte, v reflect.Value) []byte {
			tm := v.Interface().(time.Time)
			return append(tm.UTC().AppendFormat(b, time.RFC3339Nano), ';')
		}, nil
	}
	switch t.Kind() {
	case reflect.String:
		return func(b []byte, v reflect.Value) []byte {
			s := v.String()
			b = strconv.AppendInt(b, int64(len(s)), 10)
			return append(append(b, ':'), s...)
		}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(b []byte, v reflect.Value) []byte { return append(strconv.AppendInt(b, v.Int(), 10), ';') }, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return func(b []byte, v reflect.Value) []byte { return append(strconv.AppendUint(b, v.Uint(), 10), ';') }, nil
	case reflect.Bool:
		return func(b []byte, v reflect.Value) []byte {
			if v.Bool() {
				return append(b, 't')
			}
			return append(b, 'f')
		}, nil
	case reflect.Struct:
		fields := make([]appender, t.NumField())
		for i := range fields {
			f := t.Field(i)
			if !f.IsExported() && f.Type == timeType {
				return nil, fmt.Errorf("field %s: an unexported time cannot be read", f.Name)
			}
			enc, err := appenderOf(f.Type)
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", f.Name, err)
			}
			fields[i] = enc
		}
		return func(b []byte, v reflect.Value) []byte {
			for i, enc := range fields {
				b = enc(b, v.Field(i))
			}
			return b
		}, nil
	}
	return nil, fmt.Errorf("%s has no canonical form (strings, integers, booleans, times and structs of them do)", t)
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
