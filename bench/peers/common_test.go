package peers

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// Every library is set up here the same way: values of valueBytes bytes,
// keyCount keys, a local cache that keeps an entry for localTTL, and Redis
// entries that outlive any run. Each benchmark starts one private
// redis-server and runs every library against it in the same run, one
// sub-benchmark after the other, so that a comparison is a ratio measured
// on the same machine at the same time.

const (
	// keyCount is the number of distinct keys of the hit benchmarks.
	keyCount = 1024
	// batchSize is the number of keys of one batch read.
	batchSize = 100
	// valueBytes is the size of every value: a small serialized object.
	valueBytes = 200
	// localTTL is every library's local-cache lifetime: tiercache's
	// Config.L1TTL default, go-redis/cache's TinyLFU ttl and rueidis's
	// DoCache ttl.
	localTTL = time.Minute
	// redisTTL outlives any run, so that no entry expires in a timed loop.
	redisTTL = 24 * time.Hour
	// tinyLFUSize is go-redis/cache's local cache capacity in entries:
	// room for every key of a benchmark.
	tinyLFUSize = 4 * keyCount
	// warmRounds bounds the passes that warm a local cache: ristretto
	// applies fills from a buffer, so a key may need a second read.
	warmRounds = 100
)

// quiet drops go-redis's own log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	slog.SetDefault(slog.New(slog.DiscardHandler))
	goleak.VerifyTestMain(m)
}

// value returns a value of exactly valueBytes bytes that starts with tag.
func value(tag string) string {
	if len(tag) >= valueBytes {
		return tag[:valueBytes]
	}
	return tag + strings.Repeat("v", valueBytes-len(tag))
}

// baseValue is the value of every key of the hit and batch benchmarks.
var baseValue = value("base:")

// keysOf returns n key strings "prefix:i", formatted before any timing.
func keysOf(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = prefix + ":" + strconv.Itoa(i)
	}
	return keys
}

// --- tiercache ---------------------------------------------------------

// newTierNode starts a tiercache Node over its own go-redis client of srv,
// closed at cleanup. The lease is long, so that a stall of this busy
// machine does not lapse it in a timed loop and turn L1 hits into Redis
// reads (which would also make a stale L1 entry look fresh sooner).
//
// A Node works in the background: every LeaseTTL/4 (15 s here) its lease
// sends a GET (of the bus's sequence counter), a PING, a SET and a TIME,
// whatever the reads. So the benchmarks that count Redis's commands start
// a Node inside each tiercache sub-benchmark, closed when it ends, and
// never leave one running during another library's timed loop, where its
// GET would count as that library's read.
func newTierNode(tb testing.TB, srv *redistest.Server) *tier.Node {
	tb.Helper()
	n, err := tier.NewNode(context.Background(), srv.Client(tb), tier.NodeConfig{LeaseTTL: time.Minute})
	if err != nil {
		tb.Fatalf("tier.NewNode: %v", err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	return n
}

// newTierCache returns a Cache of namespace on n whose Fetch calls fetch
// (answering baseValue if fetch is nil). l1TTL < 0 turns L1 off.
func newTierCache(tb testing.TB, n *tier.Node, namespace string, l1TTL time.Duration, fetch func(context.Context, string) (string, error)) *tier.Cache[string, string] {
	tb.Helper()
	if fetch == nil {
		fetch = func(context.Context, string) (string, error) { return baseValue, nil }
	}
	c, err := tier.New(n, tier.Config[string, string]{
		Namespace: namespace,
		Fetch:     fetch,
		TTL:       redisTTL,
		L1TTL:     l1TTL,
	})
	if err != nil {
		tb.Fatalf("tier.New: %v", err)
	}
	return c
}

// fillTier reads every key once, so that each is in Redis (and in L1 if
// the cache has one), and fails unless every read answered want.
func fillTier(tb testing.TB, c *tier.Cache[string, string], keys []string, want string) {
	tb.Helper()
	ctx := context.Background()
	for _, k := range keys {
		v, err := c.Get(ctx, k)
		if err != nil || v != want {
			tb.Fatalf("tiercache fill Get(%q) = %.12q…, %v", k, v, err)
		}
	}
}

// warmTierCache starts a Node (closed at tb's cleanup) and a Cache of
// namespace on it with L1 on, and warms it with keys: a local cache new
// to tb, every entry of which is younger than tb's timed loop.
func warmTierCache(tb testing.TB, srv *redistest.Server, namespace string, keys []string) (*tier.Node, *tier.Cache[string, string]) {
	tb.Helper()
	n := newTierNode(tb, srv)
	c := newTierCache(tb, n, namespace, localTTL, nil)
	warmTier(tb, n, c, keys)
	return n, c
}

// warmTier reads every key until one pass is all L1 hits of n.
func warmTier(tb testing.TB, n *tier.Node, c *tier.Cache[string, string], keys []string) {
	tb.Helper()
	fillTier(tb, c, keys, baseValue)
	ctx := context.Background()
	for range warmRounds {
		before := n.Stats().Caches.L1Hits
		for _, k := range keys {
			if _, err := c.Get(ctx, k); err != nil {
				tb.Fatalf("tiercache warm Get(%q): %v", k, err)
			}
		}
		if n.Stats().Caches.L1Hits-before == uint64(len(keys)) {
			return
		}
	}
	tb.Fatalf("tiercache: after %d passes, not every one of %d keys is an L1 hit; stats %+v", warmRounds, len(keys), n.Stats())
}

// checkTierHits fails tb unless n's counters moved by exactly l1 L1 hits
// and l2 L2 hits, with no fetch, between before and now: the timed loop
// measured the path it names.
func checkTierHits(tb testing.TB, n *tier.Node, before tier.Stats, l1, l2 uint64) {
	tb.Helper()
	after := n.Stats()
	if d := after.Caches.Fetches - before.Caches.Fetches; d != 0 {
		tb.Fatalf("tiercache: %d fetches in the timed loop; the hit path was not measured", d)
	}
	if d := after.Caches.L1Hits - before.Caches.L1Hits; d != l1 {
		tb.Fatalf("tiercache: %d L1 hits in the timed loop, want %d", d, l1)
	}
	if d := after.Caches.L2Hits - before.Caches.L2Hits; d != l2 {
		tb.Fatalf("tiercache: %d L2 hits in the timed loop, want %d", d, l2)
	}
}

// --- go-redis/cache ----------------------------------------------------

// cmdCounter is a go-redis hook that counts the commands a client sends
// (a pipeline counts each of its commands).
type cmdCounter struct{ n atomic.Int64 }

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// newGoRedisCache returns a go-redis/cache Cache over its own go-redis
// client of srv, with a TinyLFU local cache if local, and a counter of the
// commands that client sends.
func newGoRedisCache(tb testing.TB, srv *redistest.Server, local bool) (*gocache.Cache, *cmdCounter) {
	tb.Helper()
	rdb := srv.Client(tb)
	cnt := &cmdCounter{}
	rdb.AddHook(cnt)
	opt := &gocache.Options{Redis: rdb}
	if local {
		opt.LocalCache = gocache.NewTinyLFU(tinyLFUSize, localTTL)
	}
	return gocache.New(opt), cnt
}

// fillGoRedisCache stores baseValue under every key, in Redis and in the
// local cache if the Cache has one.
func fillGoRedisCache(tb testing.TB, c *gocache.Cache, keys []string) {
	tb.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if err := c.Set(&gocache.Item{Ctx: ctx, Key: k, Value: baseValue, TTL: redisTTL}); err != nil {
			tb.Fatalf("go-redis/cache Set(%q): %v", k, err)
		}
	}
}

// warmGoRedisLocal returns a go-redis/cache Cache with a TinyLFU local
// cache new to tb, warmed with keys (which Redis must hold already): every
// entry is younger than tb's timed loop.
func warmGoRedisLocal(tb testing.TB, srv *redistest.Server, keys []string) (*gocache.Cache, *cmdCounter) {
	tb.Helper()
	c, cnt := newGoRedisCache(tb, srv, true)
	warmGoRedisCache(tb, c, cnt, keys)
	return c, cnt
}

// warmGoRedisCache reads every key until one pass sends no command: every
// key is answered by the local cache.
func warmGoRedisCache(tb testing.TB, c *gocache.Cache, cnt *cmdCounter, keys []string) {
	tb.Helper()
	ctx := context.Background()
	var s string
	for range warmRounds {
		before := cnt.n.Load()
		for _, k := range keys {
			if err := c.Get(ctx, k, &s); err != nil || s != baseValue {
				tb.Fatalf("go-redis/cache warm Get(%q) = %.12q…, %v", k, s, err)
			}
		}
		if cnt.n.Load() == before {
			return
		}
	}
	tb.Fatalf("go-redis/cache: after %d passes, its local cache does not answer every one of %d keys", warmRounds, len(keys))
}

// --- rueidis -----------------------------------------------------------

// newRueidis returns a rueidis client of srv, closed at cleanup, with its
// client-side cache (RESP3, CLIENT TRACKING in opt-in mode, the default)
// unless csc is false.
func newRueidis(tb testing.TB, srv *redistest.Server, csc bool) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{srv.Addr()},
		DisableCache: !csc,
	})
	if err != nil {
		tb.Fatalf("rueidis.NewClient: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// fillRueidis stores baseValue under every key.
func fillRueidis(tb testing.TB, c rueidis.Client, keys []string) {
	tb.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if err := c.Do(ctx, c.B().Set().Key(k).Value(baseValue).Px(redisTTL).Build()).Error(); err != nil {
			tb.Fatalf("rueidis SET %q: %v", k, err)
		}
	}
}

// rueidisCacheGet is a read through rueidis's client-side cache.
func rueidisCacheGet(ctx context.Context, c rueidis.Client, key string) rueidis.RedisResult {
	return c.DoCache(ctx, c.B().Get().Key(key).Cache(), localTTL)
}

// warmRueidisLocal returns a rueidis client of srv with client-side
// caching, new to tb, warmed with keys (which Redis must hold already):
// every entry of its cache is younger than tb's timed loop.
func warmRueidisLocal(tb testing.TB, srv *redistest.Server, keys []string) rueidis.Client {
	tb.Helper()
	c := newRueidis(tb, srv, true)
	warmRueidis(tb, c, keys)
	return c
}

// warmRueidis reads every key through DoCache until one pass is all
// client-side cache hits.
func warmRueidis(tb testing.TB, c rueidis.Client, keys []string) {
	tb.Helper()
	ctx := context.Background()
	for range warmRounds {
		hits := 0
		for _, k := range keys {
			r := rueidisCacheGet(ctx, c, k)
			if s, err := r.ToString(); err != nil || s != baseValue {
				tb.Fatalf("rueidis warm DoCache(GET %q) = %.12q…, %v", k, s, err)
			}
			if r.IsCacheHit() {
				hits++
			}
		}
		if hits == len(keys) {
			return
		}
	}
	tb.Fatalf("rueidis: after %d passes, its client-side cache does not answer every one of %d keys", warmRounds, len(keys))
}

// --- raw baselines -----------------------------------------------------

// fillRaw stores baseValue under every key with a bare go-redis SET.
func fillRaw(tb testing.TB, rdb *redis.Client, keys []string) {
	tb.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if err := rdb.Set(ctx, k, baseValue, redisTTL).Err(); err != nil {
			tb.Fatalf("SET %q: %v", k, err)
		}
	}
}

// newRawRistretto returns a ristretto cache configured like a tiercache
// Node's L1 (counters, budget, buffers) holding baseValue under every key:
// the floor of any local hit.
func newRawRistretto(tb testing.TB, keys []string) *ristretto.Cache[string, string] {
	tb.Helper()
	rc, err := ristretto.NewCache(&ristretto.Config[string, string]{
		NumCounters: 1e5,
		MaxCost:     64 << 20,
		BufferItems: 64,
	})
	if err != nil {
		tb.Fatalf("ristretto.NewCache: %v", err)
	}
	tb.Cleanup(rc.Close)
	for range warmRounds {
		missing := 0
		for _, k := range keys {
			if _, ok := rc.Get(k); !ok {
				missing++
				rc.Set(k, baseValue, int64(len(k)+len(baseValue)))
			}
		}
		if missing == 0 {
			return rc
		}
		rc.Wait()
	}
	tb.Fatal("ristretto did not admit every key")
	return nil
}

// --- the server's side -------------------------------------------------

// serverState is what the server reports of its own work so far: calls
// per command ("get", "evalsha", "client|caching", …; a command that a
// script runs counts too) and the CPU time its process used.
type serverState struct {
	calls map[string]int64
	cpu   time.Duration
}

// serverNow reads the server's INFO commandstats and cpu sections in one
// command.
func serverNow(tb testing.TB, admin *redis.Client) serverState {
	tb.Helper()
	stats, err := redistest.ReadStats(context.Background(), admin)
	if err != nil {
		tb.Fatal(err)
	}
	st := serverState{calls: make(map[string]int64), cpu: stats.CPU}
	for name, cs := range stats.Commands {
		st.calls[name] = cs.Calls
	}
	return st
}

// The commands by which each library reads a cached value from Redis: a
// read its local cache failed to answer sends at least one of them. A
// local-hit loop of a library must make Redis run none of its own; only
// those are counted, so that another library's work in the background
// cannot fail the check.
var (
	// tierReads: tiercache reads a key its node has seen in Redis with an
	// MGET of the value and its groups' stamps, pipelined after a PTTL (one
	// key) or a TIME (a batch), and any other key with its read script
	// (EVALSHA, or EVAL after a NOSCRIPT). Neither GET nor TIME: its
	// node's lease sends both in the background every LeaseTTL/4 (see
	// newTierNode), and a read's TIME always comes with an MGET.
	tierReads = []string{"mget", "pttl", "evalsha", "eval", "evalsha_ro", "eval_ro"}
	// goRedisCacheReads: go-redis/cache reads with a GET.
	goRedisCacheReads = []string{"get"}
	// rueidisReads: a rueidis DoCache or DoMultiCache miss sends CLIENT
	// CACHING YES, then a PTTL and the command (GET here) in a MULTI.
	rueidisReads = []string{"client|caching", "pttl", "get", "mget"}
	// anyReads: every library's and the raw baselines' (GET, MGET).
	anyReads = slices.Compact(slices.Sorted(slices.Values(slices.Concat(tierReads, goRedisCacheReads, rueidisReads))))
)

// readsSince returns the calls of the commands of reads from before to
// now, and which ran ("get=1 pttl=1"), for a failure's message.
func (now serverState) readsSince(before serverState, reads []string) (int64, string) {
	var (
		n   int64
		ran []string
	)
	for _, c := range reads {
		if d := now.calls[c] - before.calls[c]; d != 0 {
			n += d
			ran = append(ran, fmt.Sprintf("%s=%d", c, d))
		}
	}
	return n, strings.Join(ran, " ")
}

// callsSince returns the calls of command from before to now.
func (now serverState) callsSince(before serverState, command string) int64 {
	return now.calls[command] - before.calls[command]
}

// calls is a number of calls per command name.
type calls map[string]int64

// since returns the calls of every command from before to now.
func (now serverState) since(before serverState) calls {
	d := make(calls)
	for c, v := range now.calls {
		if v != before.calls[c] {
			d[c] = v - before.calls[c]
		}
	}
	return d
}

// expectCalls fails tb unless Redis ran, from before to now, exactly
// ops×want[c] calls of each command c of want (want[c] per operation).
func (now serverState) expectCalls(tb testing.TB, before serverState, ops int64, want calls) {
	tb.Helper()
	for _, c := range slices.Sorted(maps.Keys(want)) {
		if d := now.callsSince(before, c); d != ops*want[c] {
			tb.Fatalf("Redis ran %d %s calls for %d operations, want %d (%d each)", d, c, ops, ops*want[c], want[c])
		}
	}
}

// report reports, per operation of b, the commands Redis ran (less the
// INFO that took now) and the CPU time its process used.
func (now serverState) report(b *testing.B, before serverState) {
	var n int64
	for c, v := range now.calls {
		n += v - before.calls[c]
	}
	b.ReportMetric(float64(n-1)/float64(b.N), "redis-cmds/op")
	b.ReportMetric(float64((now.cpu-before.cpu).Microseconds())/float64(b.N), "redis-cpu-µs/op")
}

// reportLatency reports the median, 99th percentile (nearest rank) and
// maximum of delays, in microseconds, under names that start with prefix.
func reportLatency(b *testing.B, prefix string, delays []time.Duration) {
	if len(delays) == 0 {
		return
	}
	slices.Sort(delays)
	rank := func(q float64) float64 {
		i := max(int(math.Ceil(q*float64(len(delays))))-1, 0)
		return float64(delays[i]) / float64(time.Microsecond)
	}
	b.ReportMetric(rank(0.50), prefix+"p50-µs")
	b.ReportMetric(rank(0.99), prefix+"p99-µs")
	b.ReportMetric(rank(1), prefix+"max-µs")
}

// errValue describes a read that answered neither of the values expected.
func errValue(got, want string) error {
	return fmt.Errorf("read %.16q…, want %.16q…", got, want)
}
