package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// guard bounds every wait of these tests: far beyond what a loaded
// machine needs, so that a hang fails instead of blocking the run.
const guard = 10 * time.Second

// app is an application's node and cache of "users" on a private Redis,
// whose source answers "v<version>-<key>", "not found" for keys starting
// with "ghost", and holds a fetch of a key starting with "slow" until
// release is closed.
type app struct {
	srv     *redistest.Server
	rdb     *redis.Client
	node    *tier.Node
	users   *tier.Cache[string, string]
	fetches atomic.Int64
	version atomic.Int64
	started chan string
	release chan struct{}
}

func newApp(t *testing.T) *app {
	t.Helper()
	a := &app{srv: redistest.Start(t), started: make(chan string, 16), release: make(chan struct{})}
	a.rdb = a.srv.Client(t)
	a.version.Store(1)
	ctx := t.Context()
	n, err := tier.NewNode(ctx, a.srv.Client(t), tier.NodeConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	a.node = n
	a.users, err = tier.New(n, tier.Config[string, string]{
		Namespace:   "users",
		NotFoundTTL: time.Minute,
		Groups:      func(k, _ string) []string { return []string{"team:1"} },
		Fetch: func(ctx context.Context, k string) (string, error) {
			a.fetches.Add(1)
			switch {
			case strings.HasPrefix(k, "ghost"):
				return "", tier.ErrNotFound
			case strings.HasPrefix(k, "slow"):
				a.started <- k
				select {
				case <-a.release:
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			return fmt.Sprintf("v%d-%s", a.version.Load(), k), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *app) get(t *testing.T, key string) string {
	t.Helper()
	v, err := a.users.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

// eventually polls cond until it holds, failing the test after guard.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(guard)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func groupStates(r keyReport) map[string]string {
	m := map[string]string{}
	for _, g := range r.Groups {
		m[g.Label] = g.State
	}
	return m
}

func TestInspect(t *testing.T) {
	a := newApp(t)
	ctx := t.Context()
	o := inspectOptions{prefix: tier.DefaultPrefix, ttl: tier.DefaultTTL}

	t.Run("filled", func(t *testing.T) {
		a.get(t, "42")
		r, err := readKey(ctx, a.rdb, o, "users", "42")
		if err != nil {
			t.Fatal(err)
		}
		if !r.Present || !r.Servable || r.Negative || r.EnvelopeKey != "42" || r.Zone != "fresh" || r.Meta != "ok" || r.Flag.State != "none" {
			t.Fatalf("report %+v", r)
		}
		if r.TTLMillis <= 0 || r.TTLMillis > tier.DefaultTTL.Milliseconds() {
			t.Fatalf("ttl %d ms", r.TTLMillis)
		}
		want := map[string]string{"(fleet)": "current", "(namespace users)": "current", "team:1": "current"}
		if got := groupStates(r); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("groups %v, want %v", got, want)
		}
		var out bytes.Buffer
		if err := writeKeyReport(&out, r, o); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"present", "(namespace users)", "servable  yes", "flag      none"} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("text lacks %q:\n%s", s, out.String())
			}
		}
	})

	t.Run("group invalidated", func(t *testing.T) {
		a.get(t, "43")
		if err := a.node.InvalidateGroup(ctx, "team:1"); err != nil {
			t.Fatal(err)
		}
		r, err := readKey(ctx, a.rdb, o, "users", "43")
		if err != nil {
			t.Fatal(err)
		}
		if !r.Present || r.Servable || groupStates(r)["team:1"] != "stale" || groupStates(r)["(fleet)"] != "current" {
			t.Fatalf("report %+v", r)
		}
		var out bytes.Buffer
		if err := writeKeyReport(&out, r, o); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "stale (stamp") || !strings.Contains(out.String(), "servable  no") {
			t.Errorf("text:\n%s", out.String())
		}
	})

	t.Run("claimed", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { _, err := a.users.Get(ctx, "slow1"); done <- err }()
		select {
		case <-a.started:
		case <-time.After(guard):
			t.Fatal("the fetch did not start")
		}
		r, err := readKey(ctx, a.rdb, o, "users", "slow1")
		close(a.release)
		if err != nil {
			t.Fatal(err)
		}
		if r.Present || r.Flag.State != "claimed" || r.Flag.Token == "" || r.Flag.TTLMillis <= 0 {
			t.Fatalf("report %+v", r)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("failing", func(t *testing.T) {
		ks := l2.KeysFor(tier.DefaultPrefix, "users", "f")
		if err := a.rdb.Set(ctx, ks.Flag, "!tok", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		r, err := readKey(ctx, a.rdb, o, "users", "f")
		if err != nil {
			t.Fatal(err)
		}
		if r.Flag.State != "failing" || r.Flag.Token != "tok" {
			t.Fatalf("flag %+v", r.Flag)
		}
	})

	t.Run("negative", func(t *testing.T) {
		if _, err := a.users.Get(ctx, "ghost1"); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("Get = %v", err)
		}
		r, err := readKey(ctx, a.rdb, o, "users", "ghost1")
		if err != nil {
			t.Fatal(err)
		}
		if !r.Present || !r.Negative || r.Zone != "not-found" || !r.Servable || r.Corrupt != "" {
			t.Fatalf("report %+v", r)
		}
		var out bytes.Buffer
		if err := writeKeyReport(&out, r, o); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), `present: a cached "not found"`) || !strings.Contains(out.String(), "team:1") {
			t.Errorf("text:\n%s", out.String())
		}
	})

	t.Run("absent, as JSON through the command line", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := run(ctx, []string{"-redis", a.srv.Addr(), "inspect", "-json", "users", "nobody"}, &out, &errOut)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		var r keyReport
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("%v:\n%s", err, out.String())
		}
		if r.Present || r.TTLMillis != -2 || r.Flag.State != "none" || r.ValueName != "tc:v:{5:users:=nobody}" {
			t.Fatalf("report %+v", r)
		}
	})
}

// lines is an io.Writer that hands each Write to a channel: watch writes
// one line (or one gap line and its message) per Write.
type lines chan string

func (l lines) Write(b []byte) (int, error) {
	l <- string(b)
	return len(b), nil
}

func (l lines) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-l:
		return s
	case <-time.After(guard):
		t.Fatal("timed out waiting for a line")
		return ""
	}
}

func TestWatch(t *testing.T) {
	a := newApp(t)
	ctx := t.Context()
	out := make(lines, 16)
	ready := make(chan struct{})
	done := make(chan error, 1)
	o := listenOptions{prefix: tier.DefaultPrefix, json: true, n: 3, ready: func() { close(ready) }}
	go func() { done <- watch(ctx, a.rdb, o, out) }()
	<-ready

	if err := a.users.Invalidate(ctx, "1", "2"); err != nil {
		t.Fatal(err)
	}
	var first watchLine
	if err := json.Unmarshal([]byte(out.next(t)), &first); err != nil {
		t.Fatal(err)
	}
	if first.Kind != "keys" || fmt.Sprint(first.Keys) != "[{users [1 2]}]" || first.Gap != nil || first.Seq == 0 || len(first.Origin) != 32 {
		t.Fatalf("first line %+v", first)
	}

	// A message with two sequence numbers skipped, then garbage.
	b, err := (&bus.Message{Kind: bus.KindKeys, Seq: first.Seq + 3, Groups: []bus.Group{{Namespace: "users", Keys: []string{"9"}}}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.rdb.Publish(ctx, "tc:bus", b).Err(); err != nil {
		t.Fatal(err)
	}
	var second watchLine
	if err := json.Unmarshal([]byte(out.next(t)), &second); err != nil {
		t.Fatal(err)
	}
	if want := (gapInfo{Expected: first.Seq + 1, Got: first.Seq + 3, Missing: 2}); second.Gap == nil || *second.Gap != want {
		t.Fatalf("second line %+v, want gap %+v", second, want)
	}
	if err := a.rdb.Publish(ctx, "tc:bus", "garbage").Err(); err != nil {
		t.Fatal(err)
	}
	var third watchLine
	if err := json.Unmarshal([]byte(out.next(t)), &third); err != nil {
		t.Fatal(err)
	}
	if third.Malformed == "" || third.Bytes != len("garbage") {
		t.Fatalf("third line %+v", third)
	}

	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var last watchLine
	if err := json.Unmarshal([]byte(out.next(t)), &last); err != nil {
		t.Fatal(err)
	}
	if want := (watchSummary{Messages: 3, Gaps: 1, Missed: 2, Malformed: 1}); last.Summary == nil || *last.Summary != want {
		t.Fatalf("summary %+v, want %+v", last.Summary, want)
	}
}

// The text form of a gap, a message with internal groups, and a flush.
func TestWatchText(t *testing.T) {
	var seq seqTracker
	m := &bus.Message{Kind: bus.KindKeys, Origin: bus.NodeID{0xab, 0xcd, 0xef, 0x01, 2}, Seq: 7,
		Groups: []bus.Group{{Namespace: "users", Keys: []string{"42", "a b"}}}, InvalidGroups: []string{"\x00all", "\x00ns\x00books", "team:1"}}
	seq.observe(4)
	got := textOf(event{msg: m, gap: seq.observe(7)})
	want := "GAP  expected seq 5, got 7: 2 messages missed\n" +
		`seq 7  origin abcdef01  invalidate  users[42 "a b"]  groups (fleet) (namespace books) team:1` + "\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	got = textOf(event{msg: &bus.Message{Kind: bus.KindFlush, Seq: 5}, gap: seq.observe(5)})
	if !strings.HasPrefix(got, "GAP  expected seq 8, got 5: repeated") || !strings.HasSuffix(got, "seq 5  origin 00000000  flush\n") {
		t.Fatalf("got %q", got)
	}
}

func TestStats(t *testing.T) {
	a := newApp(t)
	ctx := t.Context()
	ready := make(chan struct{})
	var out bytes.Buffer
	done := make(chan error, 1)
	o := listenOptions{prefix: tier.DefaultPrefix, json: true, n: 4, ready: func() { close(ready) }}
	go func() { done <- stats(ctx, a.rdb, o, &out) }()
	<-ready
	for _, f := range []func() error{
		func() error { return a.users.Invalidate(ctx, "1", "2") },
		func() error { return a.node.InvalidateGroup(ctx, "team:1") },
		func() error { return a.users.InvalidateAll(ctx) },
		func() error { return a.node.Flush(ctx) },
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var s busStats
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if s.Messages != 4 || s.Keys != 2 || s.Groups != 2 || s.Flushes != 1 || s.Gaps != 0 || s.PerSecond <= 0 {
		t.Fatalf("stats %+v", s)
	}
	if len(s.Origins) != 1 || s.Origins[0].Messages != 4 || s.Origins[0].Keys != 2 || s.Origins[0].Flushes != 1 {
		t.Fatalf("origins %+v", s.Origins)
	}
	if want := (namespaceStats{Namespace: "users", Messages: 1, Keys: 2, All: 1}); len(s.Namespaces) != 1 || s.Namespaces[0] != want {
		t.Fatalf("namespaces %+v, want [%+v]", s.Namespaces, want)
	}
	var text bytes.Buffer
	if err := writeStats(&text, s); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"4 messages", s.Origins[0].Origin[:8], "invalidate-all", "users"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("text lacks %q:\n%s", w, text.String())
		}
	}
}

// invalidate refuses without -yes and changes nothing; with -yes another
// node's L1 copy is evicted, so that its next Get reads the source.
func TestInvalidate(t *testing.T) {
	a := newApp(t)
	ctx := t.Context()
	a.get(t, "k")
	// Wait until L1 holds the key (ristretto's Set is buffered).
	eventually(t, "an L1 hit", func() bool {
		before := a.node.Stats().Caches.L1Hits
		a.get(t, "k")
		return a.node.Stats().Caches.L1Hits > before
	})
	args := []string{"-redis", a.srv.Addr(), "invalidate", "users", "k"}

	var out, errOut bytes.Buffer
	if code := run(ctx, args, &out, &errOut); code != 2 {
		t.Fatalf("without -yes: exit %d, want 2: %s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "would invalidate 1 key(s) of namespace users (k)") {
		t.Fatalf("without -yes: %q", out.String())
	}
	ks := l2.KeysFor(tier.DefaultPrefix, "users", "k")
	if n := a.rdb.Exists(ctx, ks.Value).Val(); n != 1 {
		t.Fatal("the refused invalidate removed the value from Redis")
	}
	if v := a.get(t, "k"); v != "v1-k" || a.fetches.Load() != 1 {
		t.Fatalf("after the refused invalidate: %q, %d fetches", v, a.fetches.Load())
	}

	a.version.Store(2)
	applied := a.node.Stats().BusApplied
	out.Reset()
	if code := run(ctx, append(args[:2:2], "-json", "invalidate", "-yes", "users", "k"), &out, &errOut); code != 0 {
		t.Fatalf("with -yes: exit %d: %s", code, errOut.String())
	}
	var r actReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || !r.Done || r.Namespace != "users" || fmt.Sprint(r.Keys) != "[k]" {
		t.Fatalf("report %+v (%v): %s", r, err, out.String())
	}
	eventually(t, "the message to reach the app's node", func() bool { return a.node.Stats().BusApplied > applied })
	hits := a.node.Stats().Caches.L1Hits
	if v := a.get(t, "k"); v != "v2-k" || a.fetches.Load() != 2 || a.node.Stats().Caches.L1Hits != hits {
		t.Fatalf("after invalidate -yes: %q, %d fetches, L1 hits %d -> %d", v, a.fetches.Load(), hits, a.node.Stats().Caches.L1Hits)
	}
}

// invalidate-group and flush refuse without -yes, and act with it.
func TestGroupAndFlush(t *testing.T) {
	a := newApp(t)
	ctx := t.Context()
	a.get(t, "g")
	o := inspectOptions{prefix: tier.DefaultPrefix}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"invalidate-group", "team:1"}, "would invalidate 1 group(s) (team:1)"},
		{[]string{"flush"}, "would drop every node's L1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(ctx, append([]string{"-redis", a.srv.Addr()}, tc.args...), &out, &errOut); code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Fatalf("%v: exit %d, %q", tc.args, code, out.String())
		}
	}
	if r, err := readKey(ctx, a.rdb, o, "users", "g"); err != nil || !r.Servable {
		t.Fatalf("after refusals: %+v, %v", r, err)
	}

	drops := a.node.Stats().Drops
	for _, args := range [][]string{{"invalidate-group", "-yes", "team:1"}, {"flush", "-yes"}} {
		var out, errOut bytes.Buffer
		if code := run(ctx, append([]string{"-redis", a.srv.Addr()}, args...), &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "done: ") {
			t.Fatalf("%v: exit %d, %q %q", args, code, out.String(), errOut.String())
		}
	}
	if r, err := readKey(ctx, a.rdb, o, "users", "g"); err != nil || r.Servable || groupStates(r)["team:1"] != "stale" {
		t.Fatalf("after invalidate-group: %+v, %v", r, err)
	}
	eventually(t, "the flush to reach the app's node", func() bool { return a.node.Stats().Drops > drops })
}

// Usage errors exit 2 without touching Redis.
func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"inspect", "users"}, {"flush", "extra"}, {"invalidate", "users"}} {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), append([]string{"-redis", "127.0.0.1:1"}, args...), &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
