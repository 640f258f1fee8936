package peers

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/rueidis"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

const (
	// freshCap bounds how long a reader is polled for the new value after
	// a write: tiercache's default LeaseTTL, its staleness bound when
	// invalidation messages are lost. A reader still answering the old
	// value then counts as stale at the cap, with a delay of freshCap.
	freshCap = 2 * time.Second
	// holdGuard bounds the untimed wait for both nodes to hold the current
	// value in their local caches before a write. It is no timed
	// assertion: holding takes a read or two unless something is broken.
	holdGuard = 30 * time.Second
)

// fleet is two nodes of one library against the same Redis, each with its
// local cache. Every round of a freshness measurement uses a key of its
// own, never used before, so that no round inherits another's state (each
// fleet's keys are its own too).
type fleet struct {
	name string
	// seed makes v the value of key, a key no node has read, in the
	// source (tiercache) or in Redis (the others). Untimed.
	seed func(ctx context.Context, key, v string) error
	// write makes v the value of key through node A (for tiercache: the
	// source is updated first, as an application does, then the cache
	// told). It returns when the library's write call has returned.
	write func(ctx context.Context, key, v string) error
	// read reads key through node A (a) or node B.
	read func(ctx context.Context, key string, a bool) (string, error)
	// held reads key through node A or B and reports whether the read was
	// answered by that node's local cache (a read that was not fills the
	// cache for the next).
	held func(ctx context.Context, key string, a bool) (v string, local bool, err error)
	// audit, if not nil, snapshots what could make a reader fresh other
	// than the mechanism measured, and returns a check that fails tb if
	// any of it happened since.
	audit func() func(tb testing.TB)
	// rounds numbers the rounds so far, for keys and values.
	rounds int
}

// round is one write to watch: a key both nodes hold with the value old,
// and the value new that the write stores.
type round struct {
	key, old, new string
}

// prepare starts a round: a new key, seeded with its old value, which
// node A and node B each answer from their local caches. Untimed.
func (f *fleet) prepare(tb testing.TB) round {
	tb.Helper()
	ctx := context.Background()
	f.rounds++
	r := round{
		key: fmt.Sprintf("%s:fresh:%d", f.name, f.rounds),
		old: value(fmt.Sprintf("%s:%d:old:", f.name, f.rounds)),
		new: value(fmt.Sprintf("%s:%d:new:", f.name, f.rounds)),
	}
	if err := f.seed(ctx, r.key, r.old); err != nil {
		tb.Fatalf("%s: seed %s: %v", f.name, r.key, err)
	}
	p := newPoller()
	defer p.stop()
	for _, a := range []bool{true, false} {
		deadline := time.Now().Add(holdGuard)
		for {
			v, local, err := f.held(ctx, r.key, a)
			if err != nil {
				tb.Fatalf("%s: read %s on node %s: %v", f.name, r.key, nodeName(a), err)
			}
			if v != r.old {
				tb.Fatalf("%s: read %s on node %s: %v", f.name, r.key, nodeName(a), errValue(v, r.old))
			}
			if local {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s: node %s does not answer %s from its local cache after %v", f.name, nodeName(a), r.key, holdGuard)
			}
			p.pause()
		}
	}
	return r
}

func nodeName(a bool) string {
	if a {
		return "A"
	}
	return "B"
}

// outcome is what a reader saw after one write: the time from the write's
// return until a read of the reader returned the new value (limit if it
// never did), how many reads before that returned the old value, and
// whether the new value was read within limit.
type outcome struct {
	delay time.Duration
	stale int
	fresh bool
}

// watch writes r.new through node A and reads r.key on the reader (node A
// if own, else node B) until a read returns r.new or limit has passed
// since the write returned, pausing about 30µs between two reads (see
// poller). A value other than r.old and r.new fails tb.
func (f *fleet) watch(tb testing.TB, r round, own bool, limit time.Duration) outcome {
	ctx := context.Background()
	p := newPoller()
	defer p.stop()
	if err := f.write(ctx, r.key, r.new); err != nil {
		tb.Fatalf("%s: write %s: %v", f.name, r.key, err)
	}
	written := time.Now()
	var o outcome
	for {
		v, err := f.read(ctx, r.key, own)
		if err != nil {
			tb.Fatalf("%s: read %s: %v", f.name, r.key, err)
		}
		if v == r.new {
			o.delay, o.fresh = time.Since(written), true
			return o
		}
		if v != r.old {
			tb.Fatalf("%s: %s: %v", f.name, r.key, errValue(v, r.new))
		}
		o.stale++
		if time.Since(written) >= limit {
			o.delay = limit
			return o
		}
		p.pause()
	}
}

// tierFleet returns two tiercache nodes over their own clients of srv,
// with a Cache of one namespace each, whose Fetch reads a shared source.
// If set, a write is Cache.Set (write-through); else Cache.Invalidate.
func tierFleet(tb testing.TB, srv *redistest.Server, set bool) *fleet {
	tb.Helper()
	namespace, name := "fresh-invalidate", "tiercache-Invalidate"
	if set {
		namespace, name = "fresh-set", "tiercache-Set"
	}
	var src sync.Map // key → value: the source of truth
	fetch := func(_ context.Context, key string) (string, error) {
		v, ok := src.Load(key)
		if !ok {
			return "", fmt.Errorf("source has no %q", key)
		}
		return v.(string), nil
	}
	na, nb := newTierNode(tb, srv), newTierNode(tb, srv)
	ca := newTierCache(tb, na, namespace, localTTL, fetch)
	cb := newTierCache(tb, nb, namespace, localTTL, fetch)
	pick := func(a bool) (*tier.Node, *tier.Cache[string, string]) {
		if a {
			return na, ca
		}
		return nb, cb
	}
	f := &fleet{name: name}
	f.seed = func(_ context.Context, key, v string) error {
		src.Store(key, v)
		return nil
	}
	if set {
		f.write = func(ctx context.Context, key, v string) error {
			src.Store(key, v)
			return ca.Set(ctx, key, v)
		}
	} else {
		f.write = func(ctx context.Context, key, v string) error {
			src.Store(key, v)
			return ca.Invalidate(ctx, key)
		}
	}
	f.read = func(ctx context.Context, key string, a bool) (string, error) {
		_, c := pick(a)
		return c.Get(ctx, key)
	}
	f.held = func(ctx context.Context, key string, a bool) (string, bool, error) {
		n, c := pick(a)
		before := n.Stats().Caches.L1Hits
		v, err := c.Get(ctx, key)
		return v, n.Stats().Caches.L1Hits > before, err
	}
	// A node that dropped its whole L1 (a lost bus connection, a lapsed
	// lease, a new fleet epoch) reads Redis and so looks fresh sooner
	// than its bus made it.
	f.audit = func() func(tb testing.TB) {
		before := [2]tier.Stats{na.Stats(), nb.Stats()}
		return func(tb testing.TB) {
			for i, n := range []*tier.Node{na, nb} {
				st := n.Stats()
				if st.Drops != before[i].Drops || st.LeaseLapses != before[i].LeaseLapses || st.BusDisconnects != before[i].BusDisconnects {
					tb.Fatalf("tiercache node %s dropped its L1 during the run (stats %+v): the bus was not what was measured", nodeName(i == 0), st)
				}
			}
		}
	}
	return f
}

// goRedisCacheFleet returns two go-redis/cache Caches over their own
// clients of srv, each with its TinyLFU local cache. A write is Set on A,
// which writes A's local cache and Redis; nothing tells B.
func goRedisCacheFleet(tb testing.TB, srv *redistest.Server) *fleet {
	tb.Helper()
	ca, cntA := newGoRedisCache(tb, srv, true)
	cb, cntB := newGoRedisCache(tb, srv, true)
	pick := func(a bool) (*gocache.Cache, *cmdCounter) {
		if a {
			return ca, cntA
		}
		return cb, cntB
	}
	f := &fleet{name: "go-redis-cache-Set"}
	f.seed = func(ctx context.Context, key, v string) error {
		return ca.Set(&gocache.Item{Ctx: ctx, Key: key, Value: v, TTL: redisTTL, SkipLocalCache: true})
	}
	f.write = func(ctx context.Context, key, v string) error {
		return ca.Set(&gocache.Item{Ctx: ctx, Key: key, Value: v, TTL: redisTTL})
	}
	f.read = func(ctx context.Context, key string, a bool) (string, error) {
		c, _ := pick(a)
		var v string
		err := c.Get(ctx, key, &v)
		return v, err
	}
	f.held = func(ctx context.Context, key string, a bool) (string, bool, error) {
		c, cnt := pick(a)
		before := cnt.n.Load()
		var v string
		err := c.Get(ctx, key, &v)
		return v, cnt.n.Load() == before, err
	}
	return f
}

// rueidisFleet returns two rueidis clients of srv with client-side
// caching. A write is a SET through A; Redis tells every connection that
// read the key through DoCache (CLIENT TRACKING) that it changed.
func rueidisFleet(tb testing.TB, srv *redistest.Server) *fleet {
	tb.Helper()
	ca, cb := newRueidis(tb, srv, true), newRueidis(tb, srv, true)
	pick := func(a bool) rueidis.Client {
		if a {
			return ca
		}
		return cb
	}
	set := func(ctx context.Context, key, v string) error {
		return ca.Do(ctx, ca.B().Set().Key(key).Value(v).Px(redisTTL).Build()).Error()
	}
	f := &fleet{name: "rueidis-csc-SET", seed: set, write: set}
	f.read = func(ctx context.Context, key string, a bool) (string, error) {
		return rueidisCacheGet(ctx, pick(a), key).ToString()
	}
	f.held = func(ctx context.Context, key string, a bool) (string, bool, error) {
		r := rueidisCacheGet(ctx, pick(a), key)
		v, err := r.ToString()
		return v, r.IsCacheHit(), err
	}
	return f
}

// BenchmarkFreshness measures, for each library, how long after a write
// on node A returns a read returns the new value, both nodes holding the
// key in their local caches before the write.
//
// "other-node" reads on node B: the cross-node freshness of a fleet.
// "same-node" reads on node A, the writer: read-your-writes.
//
// tiercache writes with Cache.Set (write-through) or with a source update
// and Cache.Invalidate; its bus tells B. go-redis/cache writes with Set,
// which updates A's local cache and Redis; nothing tells B, whose local
// cache serves the old value until its TTL (1 min here), so B is polled
// until the cap (2 s) and counts as stale-at-cap. rueidis writes with a
// SET through A; Redis's CLIENT TRACKING tells A's and B's connections.
//
// Each iteration: (untimed) a key never used before is seeded with an old
// value, and read on both nodes until each answers it from its local
// cache; (timed) the write of a new value, then reads on the reader, about
// 30µs apart (see poller), until one returns the new value or the cap
// passes. ns/op is that whole round. fresh-p50-µs, fresh-p99-µs and
// fresh-max-µs are the delays from the write's return to the return of the
// first read that answered the new value, over every write (a write never
// seen within the cap counts as the cap); stale-reads/op is the reads per
// write that answered the old value after the write had returned (it
// depends on the pause between reads, so compare it only as zero or not);
// stale-at-cap/op is the fraction of writes whose new value was not read
// within the cap.
func BenchmarkFreshness(b *testing.B) {
	srv := redistest.Start(b)
	fleets := []*fleet{
		tierFleet(b, srv, true),
		tierFleet(b, srv, false),
		goRedisCacheFleet(b, srv),
		rueidisFleet(b, srv),
	}
	for _, reader := range []struct {
		name string
		own  bool
	}{{"other-node", false}, {"same-node", true}} {
		b.Run(reader.name, func(b *testing.B) {
			for _, f := range fleets {
				b.Run(f.name, func(b *testing.B) {
					measureFreshness(b, f, reader.own)
				})
			}
		})
	}
}

// measureFreshness runs b.N writes of f, each watched on the reader.
func measureFreshness(b *testing.B, f *fleet, own bool) {
	delays := make([]time.Duration, 0, b.N)
	var stale, unseen int
	var audit func(testing.TB)
	if f.audit != nil {
		audit = f.audit()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		r := f.prepare(b)
		b.StartTimer()
		o := f.watch(b, r, own, freshCap)
		delays = append(delays, o.delay)
		stale += o.stale
		if !o.fresh {
			unseen++
		}
	}
	b.StopTimer()
	if audit != nil {
		audit(b)
	}
	reportLatency(b, "fresh-", delays)
	b.ReportMetric(float64(stale)/float64(b.N), "stale-reads/op")
	b.ReportMetric(float64(unseen)/float64(b.N), "stale-at-cap/op")
}
