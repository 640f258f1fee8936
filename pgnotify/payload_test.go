package pgnotify_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/pgnotify"
)

// Payloads as the trigger sends them (json_build_object's spacing), as a
// program would write them, and the corner cases of the format, each with
// what it parses to.
func TestParsePayload(t *testing.T) {
	for _, tc := range []struct {
		name, payload string
		want          pgnotify.Notification
	}{
		{"keys", `{"ns":"products","keys":["42"]}`, pgnotify.Notification{Namespace: "products", Keys: []string{"42"}}},
		{"trigger's spacing", `{"ns" : "products", "keys" : ["42","43"], "groups" : ["category:7"]}`,
			pgnotify.Notification{Namespace: "products", Keys: []string{"42", "43"}, Groups: []string{"category:7"}}},
		{"groups only, empty keys", `{"ns":"pages","keys":[],"groups":["category:1","category:2"]}`,
			pgnotify.Notification{Namespace: "pages", Groups: []string{"category:1", "category:2"}}},
		{"all", `{"ns":"products","all":true}`, pgnotify.Notification{Namespace: "products", All: true}},
		{"all false with a key", `{"ns":"products","all":false,"keys":["1"]}`, pgnotify.Notification{Namespace: "products", Keys: []string{"1"}}},
		{"null keys with groups", `{"ns":"p","keys":null,"groups":["g"]}`, pgnotify.Notification{Namespace: "p", Groups: []string{"g"}}},
		{"escapes", `{"ns":"n\"s\\","keys":["a\u00e9\n","\u0000x"]}`, pgnotify.Notification{Namespace: "n\"s\\", Keys: []string{"aé\n", "\x00x"}}},
		{"unicode", `{"ns":"produits","keys":["café","日本"]}`, pgnotify.Notification{Namespace: "produits", Keys: []string{"café", "日本"}}},
		{"whitespace around", " \n{\"ns\":\"p\",\"all\":true}\n ", pgnotify.Notification{Namespace: "p", All: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pgnotify.ParsePayload([]byte(tc.payload))
			if err != nil {
				t.Fatalf("ParsePayload(%s): %v", tc.payload, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParsePayload(%s) = %#v; want %#v", tc.payload, got, tc.want)
			}
		})
	}
}

// Every payload that breaks the format is an error wrapping ErrPayload
// that says what is wrong.
func TestParsePayloadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, payload, says string
	}{
		{"empty", ``, "empty"},
		{"garbage", `garbage`, "invalid character"},
		{"truncated", `{"ns":"p","keys":["4`, "unexpected EOF"},
		{"not an object", `["p"]`, "cannot unmarshal array"},
		{"null", `null`, `no "ns"`},
		{"no ns", `{"keys":["1"]}`, `no "ns"`},
		{"empty ns", `{"ns":"","keys":["1"]}`, "empty namespace"},
		{"long ns", `{"ns":"` + strings.Repeat("n", pgnotify.MaxNamespaceBytes+1) + `","all":true}`, "namespace of 1021 bytes"},
		{"names nothing", `{"ns":"p"}`, "names nothing"},
		{"names nothing, empty lists", `{"ns":"p","keys":[],"groups":[],"all":false}`, "names nothing"},
		{"number key", `{"ns":"p","keys":[42]}`, "JSON strings"},
		{"string keys", `{"ns":"p","keys":"42"}`, "JSON strings"},
		{"empty key", `{"ns":"p","keys":["1",""]}`, "key 1 is empty"},
		{"null key", `{"ns":"p","keys":[null]}`, "key 0 is empty"},
		{"empty group", `{"ns":"p","groups":[""]}`, "empty group name"},
		{"NUL group", `{"ns":"p","groups":["\u0000ns\u0000p"]}`, "starts with NUL"},
		{"long group", `{"ns":"p","groups":["` + strings.Repeat("g", pgnotify.MaxGroupBytes+1) + `"]}`, "group name of 1025 bytes"},
		{"unknown field", `{"ns":"p","key":"1"}`, `unknown field "key"`},
		{"all not a bool", `{"ns":"p","all":"yes"}`, "JSON strings"},
		{"trailing data", `{"ns":"p","all":true}{}`, "data after"},
		{"trailing garbage", `{"ns":"p","all":true} x`, "data after"},
		{"invalid UTF-8", "{\"ns\":\"p\",\"keys\":[\"\xff\"]}", "not valid UTF-8"},
		{"lone surrogate", `{"ns":"p","keys":["\ud800"]}`, "U+FFFD"},
		{"replacement character", `{"ns":"p","keys":["a` + "\uFFFD" + `"]}`, "U+FFFD"},
		{"too long", `{"ns":"p","keys":["` + strings.Repeat("k", pgnotify.MaxPayloadBytes) + `"]}`, "limit 8000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := pgnotify.ParsePayload([]byte(tc.payload))
			if !errors.Is(err, pgnotify.ErrPayload) {
				t.Fatalf("ParsePayload = %#v, %v; want an error wrapping ErrPayload", n, err)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("ParsePayload: %q; want it to say %q", err, tc.says)
			}
		})
	}
}

// Encode writes what ParsePayload reads, and refuses what it would refuse.
func TestEncode(t *testing.T) {
	for _, n := range []pgnotify.Notification{
		{Namespace: "products", Keys: []string{"42", "<&>"}, Groups: []string{"category:7"}},
		{Namespace: "p", All: true},
		{Namespace: "p", All: true, Groups: []string{"g"}},
		{Namespace: "\"\\\n", Keys: []string{"\x00", "日本"}},
	} {
		b, err := n.Encode()
		if err != nil {
			t.Fatalf("Encode(%#v): %v", n, err)
		}
		got, err := pgnotify.ParsePayload(b)
		if err != nil || !reflect.DeepEqual(got, n) {
			t.Fatalf("ParsePayload(Encode(%#v)) = %#v, %v", n, got, err)
		}
	}
	if b, err := (pgnotify.Notification{Namespace: "p", Keys: []string{"<"}}).Encode(); err != nil || string(b) != `{"ns":"p","keys":["<"]}` {
		t.Fatalf("Encode = %s, %v; want the compact form", b, err)
	}
	for _, n := range []pgnotify.Notification{
		{},
		{Namespace: "p"},
		{Keys: []string{"1"}},
		{Namespace: "p", Keys: []string{""}},
		{Namespace: "p", Keys: []string{"\xff"}},
		{Namespace: "p", Groups: []string{"\x00g"}},
		{Namespace: "p", Keys: []string{strings.Repeat("k", pgnotify.MaxPayloadBytes)}},
	} {
		if b, err := n.Encode(); !errors.Is(err, pgnotify.ErrPayload) {
			t.Fatalf("Encode(%#v) = %q, %v; want an error wrapping ErrPayload", n, b, err)
		}
	}
}
