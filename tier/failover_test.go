package tier_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// replicated is a master and a replica that follows it through a fault
// proxy, so that a test can cut replication (as a lagging replica would
// have missed the last writes), and clients whose address the test moves to
// the promoted replica by hand, as a virtual IP or a DNS name would.
type replicated struct {
	t       *testing.T
	master  *redistest.Server
	replica *redistest.Server
	link    *faultproxy.Proxy // the replica's connection to the master
	target  atomic.Pointer[string]
}

func startReplicated(t *testing.T) *replicated {
	t.Helper()
	// No delay before the full sync: the replica links up at once.
	rp := &replicated{t: t, master: redistest.Start(t, "--repl-diskless-sync-delay", "0")}
	rp.link = faultproxy.Start(t, rp.master.Addr())
	host, port, err := net.SplitHostPort(rp.link.Addr())
	if err != nil {
		t.Fatal(err)
	}
	rp.replica = redistest.Start(t, "--replicaof", host, port)
	addr := rp.master.Addr()
	rp.target.Store(&addr)
	linkUp(t, rp.replica)
	return rp
}

// linkUp waits until replica reports its link to the master up.
func linkUp(t *testing.T, replica *redistest.Server) {
	t.Helper()
	eventually(t, func() bool {
		info, _ := replica.Do("INFO", "replication").(string)
		return strings.Contains(info, "master_link_status:up")
	}, "the replica's link up")
}

// client returns a client that dials whichever server is master now.
func (rp *replicated) client() *redis.Client {
	rdb := redis.NewClient(&redis.Options{
		Addr: "master",
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *rp.target.Load())
		},
		ContextTimeoutEnabled: true,
		DialTimeout:           200 * time.Millisecond,
	})
	rp.t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func (rp *replicated) node(cfg tier.NodeConfig) *tier.Node {
	rp.t.Helper()
	cfg.L1MaxBytes = 1 << 20
	n, err := tier.NewNode(context.Background(), rp.client(), cfg)
	if err != nil {
		rp.t.Fatal(err)
	}
	rp.t.Cleanup(func() { _ = n.Close() })
	return n
}

// cut stops replication for good: what the master writes from now on, the
// replica never receives.
func (rp *replicated) cut() { rp.link.Sink() }

// synced waits until the replica has everything the master wrote so far.
func (rp *replicated) synced() {
	rp.t.Helper()
	if n, _ := rp.master.Do("WAIT", 1, int(guard/time.Millisecond)).(int64); n != 1 {
		rp.t.Fatalf("WAIT 1 = %d: the replica does not follow", n)
	}
}

// failover cuts replication, kills the master (SIGKILL), promotes the
// replica with what it has, and points every client at it.
func (rp *replicated) failover() {
	rp.t.Helper()
	rp.cut()
	rp.master.Kill()
	if ok, _ := rp.replica.Do("REPLICAOF", "NO", "ONE").(string); ok != "OK" {
		rp.t.Fatalf("REPLICAOF NO ONE = %q", ok)
	}
	addr := rp.replica.Addr()
	rp.target.Store(&addr)
}

// An invalidation acknowledged with WaitReplicas survives the promotion of
// the replica that acknowledged it, even if replication is cut the moment
// it returns; without it, a replica that lagged comes back with the old
// value (the negative control); and a write that no replica acknowledged
// fails with ErrNotReplicated, is queued, and lands once a replica follows
// the new master.
func TestWaitReplicas(t *testing.T) {
	cfg := tier.NodeConfig{WaitReplicas: 1, WaitTimeout: guard, LeaseTTL: 500 * time.Millisecond}

	// warm stores v1 for k in Redis, on the replica too, then makes the
	// source say v2.
	warm := func(t *testing.T, rp *replicated, c *tier.Cache[string, string], src *source) {
		t.Helper()
		src.set("k", "v1")
		if got := mustGet(t, c, "k"); got != "v1" {
			t.Fatalf("Get = %q", got)
		}
		rp.synced()
		src.set("k", "v2")
	}
	// after reads k on a fresh node of the promoted master.
	after := func(t *testing.T, rp *replicated, src *source) string {
		t.Helper()
		return mustGet(t, cache(t, rp.node(tier.NodeConfig{}), src), "k")
	}

	// lagging invalidates k (v1 -> v2) on a node of cfg while the replica
	// lags by lag each way, fails over the moment Invalidate returns, and
	// returns what a node of the promoted replica reads.
	lagging := func(t *testing.T, cfg tier.NodeConfig, lag time.Duration) string {
		rp := startReplicated(t)
		src := newSource()
		c := cache(t, rp.node(cfg), src)
		warm(t, rp, c, src)
		rp.link.Delay(lag)
		if err := c.Invalidate(context.Background(), "k"); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		rp.failover()
		return after(t, rp, src)
	}

	t.Run("acknowledged invalidation survives", func(t *testing.T) {
		// The invalidation reaches the replica 50ms later, and its
		// acknowledgement 50ms after that: without the wait, the failover
		// would come first.
		if got := lagging(t, cfg, 50*time.Millisecond); got != "v2" {
			t.Fatalf("after the failover Get = %q: an acknowledged invalidation was lost", got)
		}
	})

	t.Run("negative control: without WaitReplicas it is lost", func(t *testing.T) {
		off := cfg
		off.WaitReplicas = 0
		if got := lagging(t, off, guard); got != "v1" {
			t.Fatalf("after the failover Get = %q, want the old value back (v1): the control shows nothing", got)
		}
	})

	t.Run("unacknowledged write fails, queues and lands later", func(t *testing.T) {
		rp := startReplicated(t)
		src := newSource()
		short := cfg
		short.WaitTimeout = 200 * time.Millisecond
		n := rp.node(short)
		c := cache(t, n, src)
		warm(t, rp, c, src)
		rp.cut()
		err := c.Invalidate(context.Background(), "k")
		if !errors.Is(err, tier.ErrNotReplicated) || !errors.Is(err, tier.ErrPending) {
			t.Fatalf("Invalidate with no replica acknowledging = %v, want ErrNotReplicated and ErrPending", err)
		}
		// The writer reads its write: the key is pending, Redis is skipped.
		if got := mustGet(t, c, "k"); got != "v2" {
			t.Fatalf("Get on the writer = %q, want v2", got)
		}
		rp.failover()
		// The promoted replica never saw the invalidation, and has no
		// replica of its own: the replay cannot be acknowledged yet.
		if p := n.Stats().Pending; p == 0 {
			t.Fatalf("nothing pending after an unacknowledged write")
		}
		host, port, _ := net.SplitHostPort(rp.replica.Addr())
		rp.replica.Do("CONFIG", "SET", "repl-diskless-sync-delay", "0")
		linkUp(t, redistest.Start(t, "--replicaof", host, port))
		eventually(t, func() bool { return n.Stats().Pending == 0 }, "the replay landed")
		if got := after(t, rp, src); got != "v2" {
			t.Fatalf("after the replay Get = %q, want v2", got)
		}
	})
}

// load is a writer and readers working on a fleet while a test injects a
// fault. The writer bumps a key's version in the source, then invalidates
// it; each reader checks that no Get returns a version older than one whose
// invalidation returned nil before the Get began, less the reader's slack
// (the staleness bound: LeaseTTL for another node's L1, none on the writer's
// node).
type load struct {
	t      *testing.T
	src    *source
	keys   []string
	stop   chan struct{}
	wg     sync.WaitGroup
	latest map[string]int // the writer's alone until stop

	mu    sync.Mutex
	acked map[string][]ackedAt
	count int

	violations, pendingErrs, outageReads atomic.Int64
}

type ackedAt struct {
	v  int
	at time.Time
}

// reader is a Cache a load reads, with its slack.
type reader struct {
	c     *tier.Cache[string, string]
	slack time.Duration
	who   string
}

// startLoad starts the writer on w and one goroutine per reader, over keys
// whose source versions start at 0.
func startLoad(t *testing.T, src *source, keys []string, w *tier.Cache[string, string], readers ...reader) *load {
	l := &load{t: t, src: src, keys: keys, stop: make(chan struct{}), latest: map[string]int{}, acked: map[string][]ackedAt{}}
	for _, k := range keys {
		src.set(k, "0")
	}
	for _, r := range readers {
		l.wg.Go(func() { l.read(r) })
	}
	l.wg.Go(func() { l.write(w) })
	return l
}

func (l *load) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *load) write(w *tier.Cache[string, string]) {
	ctx := context.Background()
	for i := 0; !l.stopped(); i++ {
		k := l.keys[i%len(l.keys)]
		l.latest[k]++
		v := l.latest[k]
		l.src.set(k, strconv.Itoa(v))
		switch err := w.Invalidate(ctx, k); {
		case err == nil:
			l.mu.Lock()
			l.acked[k] = append(l.acked[k], ackedAt{v, time.Now()})
			l.count++
			l.mu.Unlock()
		case errors.Is(err, tier.ErrPending):
			l.pendingErrs.Add(1)
		default:
			l.t.Errorf("Invalidate: %v", err)
		}
	}
}

func (l *load) read(r reader) {
	ctx := context.Background()
	for i := 0; !l.stopped(); i++ {
		k := l.keys[i%len(l.keys)]
		began := time.Now()
		got, err := r.c.Get(ctx, k)
		if err != nil {
			l.outageReads.Add(1) // an answer of the degraded mode; not checked
			continue
		}
		v, _ := strconv.Atoi(got)
		if want := l.floor(k, began.Add(-r.slack)); v < want && l.violations.Add(1) <= 5 {
			l.t.Errorf("%s read %s = %d, but version %d was acknowledged before the read began (slack %v)", r.who, k, v, want, r.slack)
		}
	}
}

// floor returns the newest version of key acknowledged before t.
func (l *load) floor(key string, t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	best := 0
	for _, a := range l.acked[key] {
		if a.at.Before(t) && a.v > best {
			best = a.v
		}
	}
	return best
}

// progress waits until more writes have been acknowledged.
func (l *load) progress(what string, more int) {
	l.t.Helper()
	l.mu.Lock()
	target := l.count + more
	l.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for {
		l.mu.Lock()
		n := l.count
		l.mu.Unlock()
		if n >= target {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: %d acknowledged writes, waiting for %d", what, n, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finish stops the load, waits until nothing is pending on the writer's
// node, and until check reads every key's latest version.
func (l *load) finish(writer *tier.Node, check *tier.Cache[string, string]) {
	l.t.Helper()
	close(l.stop)
	l.wg.Wait()
	eventually(l.t, func() bool { return writer.Stats().Pending == 0 }, "no write pending")
	for _, k := range l.keys {
		want := strconv.Itoa(l.latest[k])
		eventually(l.t, func() bool { return mustGet(l.t, check, k) == want }, k+" read as its latest version, "+want)
	}
	l.t.Logf("%d writes acknowledged, %d failed with ErrPending, %d reads answered with an error, %d violations",
		l.count, l.pendingErrs.Load(), l.outageReads.Load(), l.violations.Load())
	if v := l.violations.Load(); v > 5 {
		l.t.Errorf("%d violations in all (the first 5 reported above)", v)
	}
}

// Under Sentinel, as README recommends it (redis.NewFailoverClient, a
// master, a replica, three sentinels; WaitReplicas 1): a writer on node A
// and readers on A and B keep going while the master is SIGKILLed, the
// sentinels promote the replica, and the old master comes back as the new
// master's replica. No read on B that began more than LeaseTTL after an
// invalidation returned nil gets an older version, nor any read on A that
// began after it returned; writes that no replica could acknowledge in the
// gap fail with ErrPending and land once one can; every key converges.
func TestSentinelFailover(t *testing.T) {
	s := redistest.StartSentinel(t, redistest.SentinelOptions{DownAfter: time.Second})
	cfg := tier.NodeConfig{
		L1MaxBytes: 1 << 20, LeaseTTL: 500 * time.Millisecond,
		RedisTimeout: 300 * time.Millisecond, WaitReplicas: 1, WaitTimeout: 300 * time.Millisecond,
	}
	node := func() *tier.Node {
		n, err := tier.NewNode(context.Background(), s.FailoverClient(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	src := newSource()
	na, nb := node(), node()
	a, b := cache(t, na, src), cache(t, nb, src)
	l := startLoad(t, src, []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"}, a,
		reader{a, 0, "A"}, reader{b, cfg.LeaseTTL, "B"}, reader{b, cfg.LeaseTTL, "B"})
	l.progress("before the failover", 200)
	old := s.Master()
	s.KillMaster(t)
	s.AwaitPromotion(t)
	old.Restart() // empty; the sentinels make it the new master's replica
	l.progress("after the failover", 200)
	l.finish(na, b)
	if l.pendingErrs.Load() == 0 {
		t.Errorf("no write failed while the master was down: the failover was not exercised")
	}
}
