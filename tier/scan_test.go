package tier_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// scanStore writes keys of namespace to Redis as the library stores them,
// in one pipeline: for tests that need more keys than Sets would write
// quickly.
func scanStore(t *testing.T, f *fleet, namespace string, keys ...string) {
	t.Helper()
	ctx := context.Background()
	pipe := f.rdb.Pipeline()
	for _, k := range keys {
		data, err := tier.CBOR[string]{}.Encode("v-" + k)
		if err != nil {
			t.Fatal(err)
		}
		env, err := l2.EncodeEnvelope(k, data)
		if err != nil {
			t.Fatal(err)
		}
		keys := l2.KeysFor(tier.DefaultPrefix, namespace, k)
		pipe.Set(ctx, keys.Value, env, time.Hour)
		pipe.RPush(ctx, keys.Meta, "1") // a valid meta, in no group
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("storing %d keys: %v", len(keys), err)
	}
}

// scanStored returns which of keys of namespace Redis holds a value for.
func scanStored(t *testing.T, f *fleet, namespace string, keys ...string) []string {
	t.Helper()
	var held []string
	for _, k := range keys {
		n, err := f.rdb.Exists(context.Background(), l2.KeysFor(tier.DefaultPrefix, namespace, k).Value).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			held = append(held, k)
		}
	}
	return held
}

// scanCollect returns what Keys yields, sorted and without repeats (SCAN
// may repeat a key), failing the test on an error.
func scanCollect[V any](t *testing.T, c *tier.Cache[string, V]) []string {
	t.Helper()
	var got []string
	for k, err := range c.Keys(context.Background()) {
		if err != nil {
			t.Fatalf("Keys: %v", err)
		}
		got = append(got, k)
	}
	slices.Sort(got)
	return slices.Compact(got)
}

// scanAwaitAll waits until the node behind e has applied messages naming
// every one of keys, however the publisher batched them.
func scanAwaitAll(t *testing.T, e *busEvents, keys ...string) {
	t.Helper()
	left := map[string]bool{}
	for _, k := range keys {
		left[k] = true
	}
	for len(left) > 0 {
		m := wait(t, e.applied, fmt.Sprintf("bus messages naming %d more keys", len(left)))
		for _, g := range m.Groups {
			for _, k := range g.Keys {
				delete(left, k)
			}
		}
	}
}

func scanSorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// numbered returns n keys prefix0000, prefix0001, ...
func scanNumbered(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return keys
}

// Keys lists exactly the keys of its namespace that Redis holds, raw and
// hashed, whatever bytes they contain, and none of the namespaces that
// extend its name, that it extends, or that a loose glob would take for it.
func TestKeys_ListsItsNamespace(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	ctx := context.Background()
	long := strings.Repeat("L", 199) + "z" // 200 bytes: stored under its hash
	want := []string{"a", "b:c", "x{y}", "}{", "=#", "*", "[a]", `\`, "k\x00", long}
	c := cache(t, n, newSource())
	for _, k := range want {
		if err := c.Set(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	for _, other := range []string{"ob", "obj:", "obj*", "objx", "o?j", "[obj]", "obj\\"} {
		oc, err := tier.New(n, tier.Config[string, string]{Namespace: other, Fetch: newSource().fetch})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"a", "other", long + "x"} {
			if err := oc.Set(ctx, k, "v"); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Hashed names of this namespace that name no key: a corrupt envelope,
	// and an envelope whose key does not hash to the name.
	corrupt := l2.KeysFor(tier.DefaultPrefix, ns, long+"1").Value
	foreign := l2.KeysFor(tier.DefaultPrefix, ns, long+"2").Value
	env, err := l2.EncodeEnvelope(long+"3", []byte{0x61})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.MSet(ctx, corrupt, "garbage", foreign, env).Err(); err != nil {
		t.Fatal(err)
	}
	// A claim in flight leaves a flag, never a key.
	if err := f.rdb.Set(ctx, l2.KeysFor(tier.DefaultPrefix, ns, "flagged").Flag, "token", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(scanSorted(want), scanCollect(t, c)); diff != "" {
		t.Fatalf("Keys mismatch (-want +got):\n%s", diff)
	}
}

// Keys walks a keyspace of many SCAN pages: 5,000 keys of its namespace,
// some hashed, among 2,000 of others.
func TestKeys_ManyPages(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, newSource())
	want := scanNumbered("k", 5000)
	for i := 0; i < len(want); i += 500 {
		want[i] = strings.Repeat("h", 150) + want[i]
	}
	scanStore(t, f, ns, want...)
	scanStore(t, f, "obj2", scanNumbered("k", 1000)...)
	scanStore(t, f, "ob", scanNumbered("k", 1000)...)

	yields := 0
	for _, err := range c.Keys(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		yields++
	}
	if yields < len(want) {
		t.Fatalf("Keys yielded %d keys, want at least %d", yields, len(want))
	}
	if diff := cmp.Diff(scanSorted(want), scanCollect(t, c)); diff != "" {
		t.Fatalf("Keys mismatch (-want +got):\n%s", diff)
	}
}

// Breaking out of the loop stops Keys; the cache works on.
func TestKeys_BreakEarly(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, newSource())
	scanStore(t, f, ns, scanNumbered("k", 5000)...)

	got := 0
	for _, err := range c.Keys(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		if got++; got == 10 {
			break
		}
	}
	if got != 10 {
		t.Fatalf("got %d keys before breaking, want 10", got)
	}
	if v := mustGet(t, c, "k0001"); v != "v-k0001" {
		t.Fatalf("Get after Keys = %q", v)
	}
}

// A ctx that ends stops Keys with ctx's error, yielded once and last.
func TestKeys_ContextCancelled(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, newSource())
	scanStore(t, f, ns, scanNumbered("k", 2000)...)

	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var errs []error
		for k, err := range c.Keys(ctx) {
			if err == nil {
				t.Fatalf("Keys on a cancelled ctx yielded %q", k)
			}
			errs = append(errs, err)
		}
		if len(errs) != 1 || !errors.Is(errs[0], context.Canceled) {
			t.Fatalf("Keys on a cancelled ctx yielded errors %v, want one context.Canceled", errs)
		}
	})
	t.Run("during", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		keys, errs := 0, 0
		for _, err := range c.Keys(ctx) {
			if errs > 0 {
				t.Fatal("Keys yielded after its error")
			}
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("error %v, want context.Canceled", err)
				}
				errs++
				continue
			}
			if keys++; keys == 3 {
				cancel()
			}
		}
		if keys != 3 || errs != 1 {
			t.Fatalf("Keys yielded %d keys and %d errors after cancelling at the 3rd, want 3 and 1", keys, errs)
		}
	})
}

// Keys and InvalidatePattern on a closed node report ErrClosed; an empty
// pattern is an error.
func TestScan_ClosedNodeAndEmptyPattern(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, newSource())
	if _, err := n.InvalidatePattern(context.Background(), ""); err == nil {
		t.Fatal("InvalidatePattern with an empty pattern: no error")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.InvalidatePattern(context.Background(), "*"); !errors.Is(err, tier.ErrClosed) {
		t.Fatalf("InvalidatePattern on a closed node = %v, want ErrClosed", err)
	}
	var errs []error
	for _, err := range c.Keys(context.Background()) {
		errs = append(errs, err)
	}
	if len(errs) != 1 || !errors.Is(errs[0], tier.ErrClosed) {
		t.Fatalf("Keys on a closed node yielded %v, want one ErrClosed", errs)
	}
}

// InvalidatePattern "users:4*" invalidates users 4 and 40..49 in Redis and
// in every node's L1, and leaves user 5 and another namespace's 4 alone.
func TestInvalidatePattern_EveryNode(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	users, others := newSource(), newSource()
	newUsers := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: "users", Fetch: users.fetch})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ua, ub := newUsers(na), newUsers(nb)
	oa, err := tier.New(na, tier.Config[string, string]{Namespace: "others", Fetch: others.fetch})
	if err != nil {
		t.Fatal(err)
	}
	matching := []string{"4"}
	for i := 40; i <= 49; i++ {
		matching = append(matching, fmt.Sprint(i))
	}
	spared := []string{"5", "54", "14"}
	for _, k := range append(slices.Clone(matching), spared...) {
		users.set(k, "old")
		warm(t, na, ua, k)
		warm(t, nb, ub, k)
	}
	others.set("4", "old")
	warm(t, na, oa, "4")
	for _, k := range append(slices.Clone(matching), spared...) {
		users.set(k, "new")
	}
	others.set("4", "new")

	got, err := na.InvalidatePattern(ctx, "users:4*")
	if err != nil {
		t.Fatal(err)
	}
	if got != len(matching) {
		t.Fatalf("InvalidatePattern = %d, want %d", got, len(matching))
	}
	if held := scanStored(t, f, "users", matching...); len(held) != 0 {
		t.Fatalf("Redis still holds %q", held)
	}
	if held := scanStored(t, f, "users", spared...); len(held) != len(spared) {
		t.Fatalf("Redis holds %q of %q", held, spared)
	}
	if held := scanStored(t, f, "others", "4"); len(held) != 1 {
		t.Fatal("another namespace's key 4 was invalidated")
	}
	// This node evicted before returning; the other once it applied the
	// messages.
	for _, k := range matching {
		if v := mustGet(t, ua, k); v != "new" {
			t.Fatalf("A read %s = %q after InvalidatePattern, want new", k, v)
		}
	}
	scanAwaitAll(t, eb, matching...)
	for _, k := range matching {
		if v := mustGet(t, ub, k); v != "new" {
			t.Fatalf("B read %s = %q after applying the messages, want new", k, v)
		}
	}
	for _, k := range spared {
		if !inL1(t, nb, ub, k) || mustGet(t, ub, k) != "old" {
			t.Fatalf("B no longer serves spared key %s from L1", k)
		}
	}
	if !inL1(t, na, oa, "4") || mustGet(t, oa, "4") != "old" {
		t.Fatal("A no longer serves another namespace's 4 from L1")
	}
}

// InvalidatePattern invalidates 3,000 matching keys (some hashed) in
// batches, and no other.
func TestInvalidatePattern_Many(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	matching := scanNumbered("k", 3000)
	for i := 0; i < len(matching); i += 300 {
		matching[i] += strings.Repeat("h", 150)
	}
	spared := scanNumbered("j", 500)
	scanStore(t, f, "bulk", matching...)
	scanStore(t, f, "bulk", spared...)
	scanStore(t, f, "bulkx", scanNumbered("k", 500)...)
	scanStore(t, f, "bul", scanNumbered("k:", 500)...)

	before := n.Stats()
	got, err := n.InvalidatePattern(context.Background(), "bulk:k*")
	if err != nil {
		t.Fatal(err)
	}
	if got != len(matching) {
		t.Fatalf("InvalidatePattern = %d, want %d", got, len(matching))
	}
	if held := scanStored(t, f, "bulk", matching...); len(held) != 0 {
		t.Fatalf("Redis still holds %d matching keys, first %q", len(held), held[0])
	}
	if held := scanStored(t, f, "bulk", spared...); len(held) != len(spared) {
		t.Fatalf("Redis holds %d of %d spared keys", len(held), len(spared))
	}
	if held := scanStored(t, f, "bulkx", scanNumbered("k", 500)...); len(held) != 500 {
		t.Fatalf("Redis holds %d of 500 keys of bulkx", len(held))
	}
	if held := scanStored(t, f, "bul", scanNumbered("k:", 500)...); len(held) != 500 {
		t.Fatalf("Redis holds %d of 500 keys of bul", len(held))
	}
	st := n.Stats()
	if d := st.Caches.Invalidations - before.Caches.Invalidations; d != uint64(len(matching)) {
		t.Fatalf("Invalidations grew by %d, want %d", d, len(matching))
	}
	if d := st.Published - before.Published; d < uint64(len(matching)/256) {
		t.Fatalf("%d messages for %d keys: not batched by at most 256", d, len(matching))
	}
}

// InvalidatePattern matches with Redis's glob: each pattern below
// invalidates exactly the keys that Redis's own SCAN MATCH selects, and
// those are the keys the table expects (escapes, classes, negation, ranges
// and the matcher's quirks).
func TestInvalidatePattern_RedisGlob(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	ctx := context.Background()
	const space = "g"
	subjects := []string{"a", "b", "c", "ab", "abc", "a*", "a?", "[a]", `\`, `a\`, "-", "]", "^", "z", "A", "x:y", "\xff", "a\x00"}
	// Each subject also as a plain Redis key "g:<key>", the string the
	// pattern is matched against, so that Redis's matcher can be asked.
	for _, s := range subjects {
		if err := f.rdb.Set(ctx, space+":"+s, "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	all := slices.Clone(subjects)
	tests := []struct {
		pattern string
		want    []string
	}{
		{"g:a", []string{"a"}},
		{"g:*", all},
		{"*", all},
		{"g*", all},
		{"?:a", []string{"a"}},
		{"G:a", nil},
		{"g:a*", []string{"a", "ab", "abc", "a*", "a?", `a\`, "a\x00"}},
		{"g:a**", []string{"a", "ab", "abc", "a*", "a?", `a\`, "a\x00"}},
		{"g:?", []string{"a", "b", "c", `\`, "-", "]", "^", "z", "A", "\xff"}},
		{"g:a?", []string{"ab", "a*", "a?", `a\`, "a\x00"}},
		{`g:a\?`, []string{"a?"}},
		{`g:a\*`, []string{"a*"}},
		{`g:\a`, []string{"a"}},
		{`g:\[a\]`, []string{"[a]"}},
		{`g:\\`, []string{`\`}},
		{`g:\`, []string{`\`}}, // a trailing backslash matches itself
		{`g:a\`, []string{`a\`}},
		{"g:*c", []string{"c", "abc"}},
		{"g:*:*", []string{"x:y"}},
		{"g*y", []string{"x:y"}},
		{"g:[abc]", []string{"a", "b", "c"}},
		{"g:[^abc]", []string{`\`, "-", "]", "^", "z", "A", "\xff"}},
		{"g:[a-c]", []string{"a", "b", "c"}},
		{"g:[c-a]", []string{"a", "b", "c"}},
		{"g:[A-Z]", []string{"A"}},
		{"g:[a-c]?", []string{"ab", "a*", "a?", `a\`, "a\x00"}},
		{`g:[\]]`, []string{"]"}},
		{`g:[\^]`, []string{"^"}},
		{`g:[\-]`, []string{"-"}},
		{"g:[-a]", []string{"a", "-"}},
		{"g:[a-]", []string{"a", "]", "^"}}, // the range a..']'
		{"g:[]]", nil},                      // an empty class, then ']'
		{"g:[^]", []string{"a", "b", "c", `\`, "-", "]", "^", "z", "A", "\xff"}},
		{"g:[ab", []string{"a", "b"}}, // unclosed: runs to the end
		{"g:[", nil},
		{"g:a[*?]", []string{"a*", "a?"}},
		{"g:[[]a]", []string{"[a]"}},
		{"g:[\xff]", []string{"\xff"}},
		{"g:a\x00", []string{"a\x00"}},
		{"h:*", nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.pattern), func(t *testing.T) {
			want := scanSorted(tc.want)
			// What Redis selects, among the plain subjects.
			var redisGot []string
			it := f.rdb.Scan(ctx, 0, tc.pattern, 512).Iterator()
			for it.Next(ctx) {
				if k, ok := strings.CutPrefix(it.Val(), space+":"); ok && slices.Contains(subjects, k) {
					redisGot = append(redisGot, k)
				}
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
			slices.Sort(redisGot)
			redisGot = slices.Compact(redisGot)
			if diff := cmp.Diff(want, redisGot); diff != "" {
				t.Fatalf("the table disagrees with Redis's SCAN MATCH (-table +redis):\n%s", diff)
			}

			scanStore(t, f, space, subjects...)
			got, err := n.InvalidatePattern(ctx, tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			held := scanStored(t, f, space, subjects...)
			var gone []string
			for _, s := range subjects {
				if !slices.Contains(held, s) {
					gone = append(gone, s)
				}
			}
			if diff := cmp.Diff(want, scanSorted(gone)); diff != "" {
				t.Fatalf("InvalidatePattern(%q) mismatch (-want +invalidated):\n%s", tc.pattern, diff)
			}
			if got != len(want) {
				t.Fatalf("InvalidatePattern(%q) = %d, want %d", tc.pattern, got, len(want))
			}
		})
	}
}
