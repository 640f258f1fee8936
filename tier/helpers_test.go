package tier_test

import (
	"context"
	"errors"
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

// guard bounds every wait of a test on an event, so that a broken protocol
// fails the test instead of hanging it. No test sleeps to let things settle.
const guard = 20 * time.Second

const ns = "obj"

// source is a source of truth whose fetches the test can hold: each fetch
// reads the source when it starts, then, while gated, announces itself on
// calls and waits to be released.
type source struct {
	mu    sync.Mutex
	data  map[string]string
	gated atomic.Bool
	calls chan *call
	reads atomic.Int64
	// onFetch, if set, runs at the start of every fetch.
	onFetch func(ctx context.Context, key string)
}

// call is one fetch held by the test.
type call struct {
	key, val string
	ctx      context.Context
	release  chan struct{}
}

func newSource() *source {
	return &source{data: map[string]string{}, calls: make(chan *call, 1024)}
}

func (s *source) set(key, val string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = val
}

func (s *source) fetch(ctx context.Context, key string) (string, error) {
	s.reads.Add(1)
	if s.onFetch != nil {
		s.onFetch(ctx, key)
	}
	s.mu.Lock()
	v, ok := s.data[key]
	s.mu.Unlock()
	if s.gated.Load() {
		c := &call{key: key, val: v, ctx: ctx, release: make(chan struct{})}
		s.calls <- c
		select {
		case <-c.release:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if !ok {
		return "", tier.ErrNotFound
	}
	return v, nil
}

// next returns the next held fetch.
func (s *source) next(t *testing.T) *call {
	t.Helper()
	select {
	case c := <-s.calls:
		return c
	case <-time.After(guard):
		t.Fatal("no fetch started")
		return nil
	}
}

// fleet is one private Redis and the nodes of a test.
type fleet struct {
	t   *testing.T
	srv *redistest.Server
	rdb *redis.Client // an observer's client, for inspecting Redis
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	srv := redistest.Start(t)
	return &fleet{t: t, srv: srv, rdb: srv.Client(t)}
}

// node starts a Node with its own client, closed at cleanup.
func (f *fleet) node(cfg tier.NodeConfig, hk *hooks.Points) *tier.Node {
	f.t.Helper()
	if cfg.L1MaxBytes == 0 {
		// A small L1 keeps ristretto's sketch, which its Close zeroes, cheap
		// under the race detector.
		cfg.L1MaxBytes = 1 << 20
	}
	n, err := tier.NewNodeWithHooks(context.Background(), f.srv.Client(f.t), cfg, hk)
	if err != nil {
		f.t.Fatalf("NewNode: %v", err)
	}
	f.t.Cleanup(func() { _ = n.Close() })
	return n
}

// cache returns a string cache of namespace ns over src on node n.
func cache(t *testing.T, n *tier.Node, src *source) *tier.Cache[string, string] {
	t.Helper()
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// stored returns the value Redis holds for key, decoded, or "" if none.
func (f *fleet) stored(key string) string {
	f.t.Helper()
	b, err := f.rdb.Get(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, key).Value).Bytes()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		f.t.Fatalf("GET: %v", err)
	}
	env, err := l2.DecodeValue(b)
	if err != nil {
		f.t.Fatalf("stored envelope: %v", err)
	}
	v, err := tier.CBOR[string]{}.Decode(env.Data)
	if err != nil {
		f.t.Fatalf("stored value: %v", err)
	}
	return v
}

// flag returns the token in key's flag, or "" if none.
func (f *fleet) flag(key string) string {
	f.t.Helper()
	v, err := f.rdb.Get(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, key).Flag).Result()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		f.t.Fatalf("GET flag: %v", err)
	}
	return v
}

// result is the outcome of a Get run in the background.
type result struct {
	v   string
	err error
}

// goGet runs c.Get in a goroutine and returns its future result.
func goGet(ctx context.Context, c *tier.Cache[string, string], key string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		v, err := c.Get(ctx, key)
		ch <- result{v, err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(guard):
		t.Fatal("Get did not return")
		return result{}
	}
}

// mustGet is Get that fails the test on error.
func mustGet(t *testing.T, c *tier.Cache[string, string], key string) string {
	t.Helper()
	v, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

// signal returns a channel and a func that sends on it without blocking
// twice: for hooks that announce an event once.
func events[T any]() (chan T, func(T)) {
	ch := make(chan T, 1024)
	return ch, func(v T) { ch <- v }
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(guard):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// eventually polls cond until it holds, failing the test if it does not
// within the guard: for conditions only Redis or the bus decides when.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
