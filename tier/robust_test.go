package tier_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// slowFlag is a FlagTTL far longer than any test: a claim left behind by a
// bug would outlive the test's guard, so the test sees it.
const slowFlag = 10 * time.Minute

// awaitNoFlag waits until key's claim is gone from Redis.
func (f *fleet) awaitNoFlag(key string) {
	f.t.Helper()
	deadline := time.Now().Add(guard)
	for f.flag(key) != "" {
		if time.Now().After(deadline) {
			f.t.Fatalf("the claim of %q was never released", key)
		}
	}
}

// panicky is a switch that makes a callback panic once armed.
type panicky struct{ armed atomic.Bool }

func (p *panicky) check(what string) {
	if p.armed.Load() {
		panic("boom in " + what)
	}
}

// panicCodec is the default codec, panicking when its switch says so.
type panicCodec struct {
	encode, decode *panicky
}

func (c panicCodec) Encode(v string) ([]byte, error) {
	c.encode.check("Encode")
	return tier.CBOR[string]{}.Encode(v)
}

func (c panicCodec) Decode(b []byte) (string, error) {
	c.decode.check("Decode")
	return tier.CBOR[string]{}.Decode(b)
}

// R37: a callback of the user's that panics, on any path, never crashes the
// process, becomes an error wrapping ErrPanic for the callers concerned,
// and never strands a claim: it is released before the call returns (or,
// in the background, at once), so no other node waits for it.
func TestRace_R37_CallbackPanics(t *testing.T) {
	ctx := context.Background()
	type rig struct {
		f                                 *fleet
		src                               *source
		a, b                              *tier.Cache[string, string]
		groups, encode, decode, key, hits panicky
		misses, fetch                     panicky
	}
	setup := func(t *testing.T, cfg tier.Config[string, string]) *rig {
		r := &rig{f: newFleet(t), src: newSource()}
		for _, k := range []string{"k", "l"} {
			r.src.set(k, "v1")
		}
		cfg.Namespace = ns
		cfg.Fetch = func(ctx context.Context, k string) (string, error) {
			r.fetch.check("Fetch")
			return r.src.fetch(ctx, k)
		}
		cfg.FetchMany = func(ctx context.Context, ks []string) (map[string]string, error) {
			r.fetch.check("FetchMany")
			out := map[string]string{}
			for _, k := range ks {
				v, err := r.src.fetch(ctx, k)
				if err != nil {
					return nil, err
				}
				out[k] = v
			}
			return out, nil
		}
		cfg.Groups = func(string, string) []string { r.groups.check("Groups"); return []string{"G"} }
		cfg.Codec = panicCodec{&r.encode, &r.decode}
		cfg.Key = func(k string) string { r.key.check("Key"); return k }
		cfg.OnHit = func(string, tier.Source) { r.hits.check("OnHit") }
		cfg.OnMiss = func(string) { r.misses.check("OnMiss") }
		nc := tier.NodeConfig{FlagTTL: slowFlag}
		na, nb := r.f.node(nc, nil), r.f.node(nc, nil)
		var err error
		if r.a, err = tier.New(na, cfg); err != nil {
			t.Fatal(err)
		}
		if r.b, err = tier.New(nb, cfg); err != nil {
			t.Fatal(err)
		}
		return r
	}
	wantPanic := func(t *testing.T, what string, err error) {
		t.Helper()
		if !errors.Is(err, tier.ErrPanic) {
			t.Fatalf("%s = %v; want an error wrapping ErrPanic", what, err)
		}
	}
	getMany := func(c *tier.Cache[string, string], key string) error {
		_, err := c.GetMany(ctx, []string{key})
		return err
	}

	for _, tc := range []struct {
		name string
		arm  func(r *rig) *panicky
		run  func(t *testing.T, r *rig) error
	}{
		{"Get/Fetch", func(r *rig) *panicky { return &r.fetch }, func(t *testing.T, r *rig) error { _, err := r.a.Get(ctx, "k"); return err }},
		{"Get/Groups", func(r *rig) *panicky { return &r.groups }, func(t *testing.T, r *rig) error { _, err := r.a.Get(ctx, "k"); return err }},
		{"Get/Encode", func(r *rig) *panicky { return &r.encode }, func(t *testing.T, r *rig) error { _, err := r.a.Get(ctx, "k"); return err }},
		{"Get/Key", func(r *rig) *panicky { return &r.key }, func(t *testing.T, r *rig) error { _, err := r.a.Get(ctx, "k"); return err }},
		{"Get/OnMiss", func(r *rig) *panicky { return &r.misses }, func(t *testing.T, r *rig) error { _, err := r.a.Get(ctx, "k"); return err }},
		{"Get/OnHit", func(r *rig) *panicky { return &r.hits }, func(t *testing.T, r *rig) error {
			r.hits.armed.Store(false)
			mustGet(t, r.a, "k")
			r.hits.armed.Store(true)
			_, err := r.a.Get(ctx, "k")
			return err
		}},
		{"Get/Decode", func(r *rig) *panicky { return &r.decode }, func(t *testing.T, r *rig) error {
			r.decode.armed.Store(false)
			mustGet(t, r.a, "k") // fills Redis; then B decodes it
			r.decode.armed.Store(true)
			_, err := r.b.Get(ctx, "k")
			return err
		}},
		{"GetMany/Fetch", func(r *rig) *panicky { return &r.fetch }, func(t *testing.T, r *rig) error { return getMany(r.a, "k") }},
		{"GetMany/Groups", func(r *rig) *panicky { return &r.groups }, func(t *testing.T, r *rig) error { return getMany(r.a, "k") }},
		{"GetMany/Encode", func(r *rig) *panicky { return &r.encode }, func(t *testing.T, r *rig) error { return getMany(r.a, "k") }},
		{"GetMany/Key", func(r *rig) *panicky { return &r.key }, func(t *testing.T, r *rig) error { return getMany(r.a, "k") }},
		{"Set/Groups", func(r *rig) *panicky { return &r.groups }, func(t *testing.T, r *rig) error { return r.a.Set(ctx, "k", "v2") }},
		{"Set/Encode", func(r *rig) *panicky { return &r.encode }, func(t *testing.T, r *rig) error { return r.a.Set(ctx, "k", "v2") }},
		{"Set/Key", func(r *rig) *panicky { return &r.key }, func(t *testing.T, r *rig) error { return r.a.Set(ctx, "k", "v2") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := setup(t, tier.Config[string, string]{})
			tc.arm(r).armed.Store(true)
			wantPanic(t, tc.name, tc.run(t, r))
			if tok := r.f.flag("k"); tok != "" {
				t.Fatalf("the claim was left in Redis (%s)", tok)
			}
			// Without the panic, the key is served as usual.
			tc.arm(r).armed.Store(false)
			if v := mustGet(t, r.b, "k"); v != "v1" && v != "v2" {
				t.Fatalf("after the panic: %q", v)
			}
		})
	}

	// GetMany through FetchMany: every key of the batch gets the error.
	t.Run("GetMany/FetchMany", func(t *testing.T) {
		r := setup(t, tier.Config[string, string]{})
		r.fetch.armed.Store(true)
		_, err := r.a.GetMany(ctx, []string{"k", "l"})
		var ke *tier.KeyErrors[string]
		if !errors.As(err, &ke) || len(ke.Errs) != 2 || !errors.Is(ke.Errs["k"], tier.ErrFetchPanic) || !errors.Is(ke.Errs["l"], tier.ErrPanic) {
			t.Fatalf("GetMany = %v; want both keys failing with ErrFetchPanic and ErrPanic", err)
		}
		if r.f.flag("k") != "" || r.f.flag("l") != "" {
			t.Fatal("a claim was left in Redis")
		}
	})

	// In the background: a stale-while-revalidate refresh and an early
	// refresh whose Groups panics. The process lives on and the claim the
	// refresh took is released at once.
	t.Run("stale-while-revalidate/Groups", func(t *testing.T) {
		r := setup(t, tier.Config[string, string]{TTL: time.Hour, FreshFor: 30 * time.Minute, L1TTL: -1})
		mustGet(t, r.a, "k")
		r.f.pexpire("k", 20*time.Minute)
		r.groups.armed.Store(true)
		v, err := r.b.Get(ctx, "k") // stale: answered now, refreshed behind
		if err != nil || v != "v1" {
			t.Fatalf("stale Get = %q, %v", v, err)
		}
		r.f.awaitNoFlag("k")
	})
	t.Run("early-refresh/Encode", func(t *testing.T) {
		r := &rig{f: newFleet(t), src: newSource()}
		r.src.set("k", "v1")
		var d draws
		n := r.f.node(tier.NodeConfig{FlagTTL: slowFlag}, &hooks.Points{Rand: d.read})
		c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: r.src.fetch, TTL: time.Hour, L1TTL: time.Hour,
			EarlyRefresh: 1e12, Codec: panicCodec{&r.encode, &r.decode}})
		if err != nil {
			t.Fatal(err)
		}
		mustGet(t, c, "k")
		tier.WaitL1(n)
		r.encode.armed.Store(true)
		d.set(1 - 1.0/(1<<40))
		mustGet(t, c, "k") // an L1 hit that starts a refresh
		awaitStats(t, n, "the refresh", func(st tier.Stats) bool { return st.Caches.Refreshes == 1 && st.Caches.Fetches == 2 })
		r.f.awaitNoFlag("k")
	})
}

// exitCodec is the default codec, whose Decode ends its goroutine
// (runtime.Goexit, as t.FailNow in it would).
type exitCodec struct{}

func (exitCodec) Encode(v string) ([]byte, error) { return tier.CBOR[string]{}.Encode(v) }

func (exitCodec) Decode([]byte) (string, error) {
	runtime.Goexit()
	return "", nil
}

// R37: a Codec that ends its goroutine while it decodes a value whose read
// claimed the key (one due for a refresh) gives the claim up on the way
// out, for Get and for GetMany, and GetMany also the claims it took before
// in the same read (of a cold key, read first): no other node waits FlagTTL
// for them.
func TestRace_R37_DecodeEndsItsGoroutine(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(fmt.Sprint("GetMany=", many), func(t *testing.T) {
			ctx := context.Background()
			f := newFleet(t)
			cfg := tier.Config[string, string]{
				Fetch:    func(context.Context, string) (string, error) { return "v", nil },
				TTL:      time.Hour,
				FreshFor: 45 * time.Minute,
			}
			nc := tier.NodeConfig{FlagTTL: slowFlag}
			if _, err := newCache(t, f.node(nc, nil), cfg).Get(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			// Due for a refresh: the value's remaining lifetime is below
			// TTL - FreshFor, so the next read claims it with its value.
			if err := f.rdb.PExpire(ctx, l2.KeysFor(tier.DefaultPrefix, ns, "k").Value, 10*time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			cfg.Codec = exitCodec{}
			reader := newCache(t, f.node(nc, nil), cfg)
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				if many {
					_, _ = reader.GetMany(ctx, []string{"cold", "k"})
				} else {
					_, _ = reader.Get(ctx, "k")
				}
				t.Error("the read returned, though its Codec ended its goroutine")
			}()
			wait(t, ended, "the read's goroutine to end")
			for _, k := range []string{"cold", "k"} {
				if flag := f.flag(k); flag != "" {
					t.Fatalf("the claim of %s (%q) outlived the read, which holds it until FlagTTL; want it released", k, flag)
				}
			}
		})
	}
}

// exitAfterRead is a go-redis hook that ends the goroutine (runtime.Goexit,
// as t.FailNow does) once, right after a script that names one of flags
// ran, alone or in a pipeline.
type exitAfterRead struct {
	flags []any
	once  sync.Once
}

func (h *exitAfterRead) after(cmds ...redis.Cmder) {
	for _, cmd := range cmds {
		name := cmd.Name()
		if (name != "evalsha" && name != "eval") || cmd.Err() != nil {
			continue // a NOSCRIPT reply ran nothing: the script follows
		}
		for _, flag := range h.flags {
			if slices.Contains(cmd.Args(), flag) {
				h.once.Do(runtime.Goexit)
			}
		}
	}
}

func (h *exitAfterRead) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *exitAfterRead) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.after(cmd)
		return err
	}
}
func (h *exitAfterRead) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.after(cmds...)
		return err
	}
}

// TestRace_R37_ClientHookEndsTheRead proves that a hook of the node's own
// Redis client that ends the goroutine (runtime.Goexit) right after the
// read script claimed a key costs the read, not the claim: the read's
// tokens are released on the way out, so that no reader waits FlagTTL (ten
// minutes here), and the next read fills the key.
func TestRace_R37_ClientHookEndsTheRead(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(fmt.Sprint("GetMany=", many), func(t *testing.T) {
			ctx := context.Background()
			f := newFleet(t)
			rdb := f.srv.Client(t)
			keys := []string{"k", "k2"}
			hook := &exitAfterRead{}
			for _, k := range keys {
				hook.flags = append(hook.flags, l2.KeysFor(tier.DefaultPrefix, ns, k).Flag)
			}
			rdb.AddHook(hook)
			n, err := tier.NewNode(ctx, rdb, tier.NodeConfig{FlagTTL: slowFlag})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Close() })
			src := newSource()
			for _, k := range keys {
				src.set(k, "v")
			}
			c := cache(t, n, src)
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				if many {
					_, _ = c.GetMany(ctx, keys)
				} else {
					_, _ = c.Get(ctx, "k")
				}
				t.Error("the read returned, though a hook of its client ended its goroutine")
			}()
			wait(t, ended, "the read's goroutine to end")
			for _, k := range keys {
				if flag := f.flag(k); flag != "" {
					t.Fatalf("the claim of %s (%q) outlived the read, which holds it until FlagTTL; want it released", k, flag)
				}
			}
			if got := mustGet(t, c, "k"); got != "v" {
				t.Fatalf("Get after the ended read = %q; want v", got)
			}
		})
	}
}

// Close cancels and waits for the fetches that GetMany started, through
// Fetch and through FetchMany, as it does for Get's.
func TestCloseWaitsForGetManyFetches(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(fmt.Sprint("FetchMany=", many), func(t *testing.T) {
			f := newFleet(t)
			started := make(chan struct{}, 1)
			var returned atomic.Bool
			block := func(ctx context.Context) error {
				started <- struct{}{}
				<-ctx.Done()
				returned.Store(true)
				return ctx.Err()
			}
			cfg := tier.Config[string, string]{Namespace: ns, Fetch: func(ctx context.Context, _ string) (string, error) {
				return "", block(ctx)
			}}
			if many {
				cfg.FetchMany = func(ctx context.Context, _ []string) (map[string]string, error) {
					return nil, block(ctx)
				}
			}
			n := f.node(tier.NodeConfig{}, nil)
			c, err := tier.New(n, cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := c.GetMany(context.Background(), []string{"a", "b"})
				done <- err
			}()
			wait(t, started, "the fetch")
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if !returned.Load() {
				t.Fatal("Close returned while a fetch that GetMany started was still running")
			}
			if err := wait(t, done, "GetMany"); err == nil {
				t.Fatal("GetMany after Close = nil error")
			}
		})
	}
}

// R38: InvalidatePattern removes claims as well as values, so that a fill
// in flight when it returns never lands; a long key's claim, which names
// only the key's hash, is removed too.
func TestRace_R38_PatternRemovesClaims(t *testing.T) {
	long := strings.Repeat("x", l2.RawKeyMax+1)
	for _, key := range []string{"k1", long} {
		t.Run(fmt.Sprint(len(key), " bytes"), func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set(key, "v1")
			na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
			a, b := cache(t, na, src), cache(t, nb, src)
			ctx := context.Background()
			src.gated.Store(true)
			first := goGet(ctx, a, key)
			held := src.next(t)
			src.gated.Store(false)
			src.set(key, "v2")
			if _, err := nb.InvalidatePattern(ctx, ns+":"+key[:1]+"*"); err != nil {
				t.Fatal(err)
			}
			if f.flag(key) != "" {
				t.Fatal("InvalidatePattern returned with the claim of a matching key in place")
			}
			close(held.release)
			if r := await(t, first); r.err != nil || r.v != "v1" {
				t.Fatalf("A's Get = %q, %v; want v1 (its read overlapped the write)", r.v, r.err)
			}
			if got := f.stored(key); got == "v1" {
				t.Fatal("the fill in flight landed after InvalidatePattern returned")
			}
			for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
				if v := mustGet(t, c, key); v != "v2" {
					t.Fatalf("node %s = %q; want v2", name, v)
				}
			}
		})
	}
}

// lossyCodec keeps only the first 3 bytes of a string.
type lossyCodec struct{}

func (lossyCodec) Encode(v string) ([]byte, error) {
	return tier.CBOR[string]{}.Encode(v[:min(3, len(v))])
}

func (lossyCodec) Decode(b []byte) (string, error) { return tier.CBOR[string]{}.Decode(b) }

// R39: the node that fetched a value serves what its codec decodes from
// the bytes it stored, as every other node does: with a lossy codec, every
// node serves the same value.
func TestRace_R39_FetcherServesDecodedCopy(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "abcdef")
	cfg := tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, Codec: lossyCodec{}}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := newCache(t, na, cfg), newCache(t, nb, cfg)
	if v := mustGet(t, a, "k"); v != "abc" {
		t.Fatalf("the fetching node's Get = %q; want the decoded copy %q", v, "abc")
	}
	tier.WaitL1(na)
	if v, ri, _ := getInfo(t, a, "k"); v != "abc" || ri.Source != tier.SourceL1 {
		t.Fatalf("the fetching node's L1 = %q from %v", v, ri.Source)
	}
	if v := mustGet(t, b, "k"); v != "abc" {
		t.Fatalf("the other node = %q", v)
	}
}

// An entry in a thousand groups is cached (a list page whose every item is
// a group); one in more than MaxGroupsPerEntry is returned with an error
// that says it was not cached.
func TestManyGroupsPerEntry(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("page", "v1")
	src.set("huge", "v1")
	groupsOf := func(key, _ string) []string {
		n := 1000
		if key == "huge" {
			n = tier.MaxGroupsPerEntry + 1
		}
		gs := make([]string, n)
		for i := range gs {
			gs[i] = fmt.Sprint("product:", i)
		}
		return gs
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := grouped(t, na, src, groupsOf), grouped(t, nb, src, groupsOf)
	ctx := context.Background()
	mustGet(t, a, "page")
	tier.WaitL1(na)
	if _, ri, _ := getInfo(t, a, "page"); ri.Source != tier.SourceL1 {
		t.Fatalf("second Get on the filling node from %v; want L1", ri.Source)
	}
	if _, ri, _ := getInfo(t, b, "page"); ri.Source != tier.SourceL2 {
		t.Fatalf("Get on another node from %v; want L2", ri.Source)
	}
	src.set("page", "v2")
	if err := nb.InvalidateGroup(ctx, "product:999"); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, b, "page"); v != "v2" {
		t.Fatalf("after one of its 1000 groups was invalidated, on the writer: %q", v)
	}
	awaitStats(t, na, "the group message", func(st tier.Stats) bool { return st.GroupInvalidations > 0 })
	if v := mustGet(t, a, "page"); v != "v2" {
		t.Fatalf("after one of its 1000 groups was invalidated, on the node that filled it: %q", v)
	}
	if v, err := a.Get(ctx, "huge"); v != "v1" || !errors.Is(err, tier.ErrBadGroup) {
		t.Fatalf("Get of an entry in too many groups = %q, %v; want the value and ErrBadGroup", v, err)
	}
}

// Warnings reach slog.Default() when no Logger is given: here, the one
// about a client that ignores context deadlines. README's quick start,
// whose client honours them, logs nothing.
func TestWarningsReachDefaultLogger(t *testing.T) {
	srv := redistest.Start(t)
	var (
		mu   sync.Mutex
		recs []string
	)
	old := slog.Default()
	slog.SetDefault(slog.New(recorder{func(r slog.Record) {
		mu.Lock()
		defer mu.Unlock()
		recs = append(recs, r.Level.String()+" "+r.Message)
	}}))
	t.Cleanup(func() { slog.SetDefault(old) })
	start := func(opts *redis.Options) {
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
		n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{})
		if err != nil {
			t.Fatal(err)
		}
		_ = n.Close()
	}
	start(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	mu.Lock()
	quick := append([]string(nil), recs...)
	mu.Unlock()
	if len(quick) != 0 {
		t.Fatalf("the quick start's setup logged %q", quick)
	}
	start(&redis.Options{Addr: srv.Addr()})
	mu.Lock()
	defer mu.Unlock()
	if len(recs) == 0 || !strings.Contains(recs[0], "WARN") || !strings.Contains(recs[0], "ContextTimeoutEnabled") {
		t.Fatalf("records %q; want the ContextTimeoutEnabled warning", recs)
	}
}

// recorder is a slog.Handler that hands every record to a func.
type recorder struct{ f func(slog.Record) }

func (recorder) Enabled(context.Context, slog.Level) bool { return true }
func (h recorder) Handle(_ context.Context, r slog.Record) error {
	h.f(r)
	return nil
}
func (h recorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recorder) WithGroup(string) slog.Handler      { return h }
