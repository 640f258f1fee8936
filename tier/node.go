package tier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/l2"
)

// Defaults of NodeConfig's zero fields.
const (
	DefaultPrefix        = "tc"
	DefaultL1MaxBytes    = l1.DefaultMaxBytes
	DefaultFlagTTL       = 10 * time.Second
	DefaultMaxKeyBytes   = 1 << 20
	DefaultMaxValueBytes = 8 << 20
)

// NodeConfig configures a Node. The zero value is valid: every zero field
// takes the default named in its comment.
type NodeConfig struct {
	// Prefix starts the name of every key the library writes to Redis, so
	// that several independent fleets can share one Redis. It must not
	// contain '{' or '}' (they would break the cluster hash tag) and is at
	// most 64 bytes. Default "tc".
	Prefix string
	// L1MaxBytes bounds the memory of the node's L1, shared by all of its
	// Caches, in bytes (values' encoded size plus keys plus per-entry
	// overhead). Default 64 MiB; negative is an error.
	L1MaxBytes int64
	// Logger receives the node's warnings and errors. Default: discard.
	Logger *slog.Logger
	// FlagTTL is how long a claim of a missing key lasts in Redis: it must
	// be longer than your slowest Fetch, since a fetch that outlives its
	// flag cannot fill the cache (RACES.md R04). It also bounds how long a
	// Get waits for another claimant's fetch before fetching without caching.
	// Default 10s; at least 1ms.
	FlagTTL time.Duration
	// MaxKeyBytes bounds the string form of a key, in bytes. Longer keys are
	// rejected with ErrKeyTooLarge. Default 1 MiB.
	MaxKeyBytes int
	// MaxValueBytes bounds the stored form of a value (its encoding plus the
	// envelope and the key), in bytes. A larger value is returned by Get but
	// not cached; Set rejects it with ErrValueTooLarge. Default 8 MiB.
	MaxValueBytes int
}

func (cfg NodeConfig) withDefaults() (NodeConfig, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(cfg.Prefix, "{}") || len(cfg.Prefix) > 64 {
		return cfg, fmt.Errorf("%w: Prefix %q must be at most 64 bytes with no '{' or '}'", ErrConfig, cfg.Prefix)
	}
	if cfg.L1MaxBytes < 0 {
		return cfg, fmt.Errorf("%w: L1MaxBytes %d is negative", ErrConfig, cfg.L1MaxBytes)
	}
	if cfg.L1MaxBytes == 0 {
		cfg.L1MaxBytes = DefaultL1MaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.FlagTTL == 0:
		cfg.FlagTTL = DefaultFlagTTL
	case cfg.FlagTTL < time.Millisecond:
		return cfg, fmt.Errorf("%w: FlagTTL %v is under 1ms", ErrConfig, cfg.FlagTTL)
	}
	switch {
	case cfg.MaxKeyBytes == 0:
		cfg.MaxKeyBytes = DefaultMaxKeyBytes
	case cfg.MaxKeyBytes < 0:
		return cfg, fmt.Errorf("%w: MaxKeyBytes %d is negative", ErrConfig, cfg.MaxKeyBytes)
	}
	switch {
	case cfg.MaxValueBytes == 0:
		cfg.MaxValueBytes = DefaultMaxValueBytes
	case cfg.MaxValueBytes < 0:
		return cfg, fmt.Errorf("%w: MaxValueBytes %d is negative", ErrConfig, cfg.MaxValueBytes)
	}
	return cfg, nil
}

// Node is one process's membership in the fleet: its Redis client, its L1
// shared by all of its Caches, and its background work. Create one per
// process with NewNode, and Close it on shutdown. It is safe for concurrent
// use.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	store  *l2.Store
	l1     *l1.Cache
	hooks  *hooks.Points
	stats  counters
	life   context.Context // cancelled by Close; parent of background work
	cancel context.CancelFunc

	mu         sync.Mutex
	closed     bool
	namespaces map[string]bool
	wg         sync.WaitGroup // every goroutine the node started
}

// NewNode returns a Node that caches through rdb, which may be a single
// server, Sentinel or Cluster client; the Node does not close it. NewNode
// loads the protocol's scripts into Redis within ctx; if Redis cannot be
// reached, it logs a warning and returns a working Node anyway (scripts load
// on first use), so that a fleet can start while Redis is down.
func NewNode(ctx context.Context, rdb redis.UniversalClient, cfg NodeConfig) (*Node, error) {
	return newNode(ctx, rdb, cfg, nil)
}

func newNode(ctx context.Context, rdb redis.UniversalClient, cfg NodeConfig, hk *hooks.Points) (*Node, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	l1cfg := l1.Config{MaxBytes: cfg.L1MaxBytes, Epochs: consistency.NewEpochs(0)}
	if hk != nil {
		l1cfg.Hooks = hk.L1
	}
	cache, err := l1.New(l1cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n := &Node{
		cfg:        cfg,
		log:        cfg.Logger,
		store:      l2.NewStore(rdb),
		l1:         cache,
		hooks:      hk,
		namespaces: make(map[string]bool),
	}
	n.life, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := n.store.LoadScripts(ctx); err != nil {
		n.log.Warn("tiercache: cannot load scripts; they will load on first use", "err", err)
	}
	return n, nil
}

// Close stops the node's background work and waits for it: fetches in
// flight see their context cancelled, and Close returns when they have
// returned (a Fetch must honour its ctx). Calls on the node's Caches then
// return ErrClosed. Close is idempotent and always returns nil.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.wg.Wait()
	n.l1.Close()
	return nil
}

// spawn runs f in a goroutine that Close waits for, unless the node is
// closed.
func (n *Node) spawn(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func (n *Node) register(namespace string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.namespaces[namespace] {
		return fmt.Errorf("%w: namespace %q already has a Cache on this node", ErrConfig, namespace)
	}
	n.namespaces[namespace] = true
	return nil
}

func (n *Node) token() string {
	if n.hooks != nil && n.hooks.Token != nil {
		return n.hooks.Token()
	}
	return consistency.NewToken()
}

// cleanupContext returns a context for I/O that must run even though ctx was
// cancelled or the node is closing (releasing a flag), bounded by
// cleanupTimeout and the flag TTL.
func (n *Node) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), min(n.cfg.FlagTTL, cleanupTimeout))
}

// cleanupTimeout bounds a cleanup operation such as releasing a flag.
const cleanupTimeout = time.Second

// Stats is a snapshot of a node's counters since it started. Every field
// counts events on this node only.
type Stats struct {
	// L1Hits counts Gets answered from L1.
	L1Hits uint64
	// L2Hits counts flights answered from Redis.
	L2Hits uint64
	// Fetches counts calls of a Fetch function (source reads).
	Fetches uint64
	// FillsLanded counts values written to L2 by this node's claims.
	FillsLanded uint64
	// FillsRefused counts fills that L2 refused because the claim had been
	// invalidated, had expired, or was taken over (R01, R03, R04, R05).
	FillsRefused uint64
	// L1FillsRefused counts L1 fills refused or undone because an
	// invalidation landed since the fill's ticket was taken (R12, R13).
	L1FillsRefused uint64
	// Waits counts flights that found another claimant's flag and waited.
	Waits uint64
	// UncachedFetches counts fetches made without a claim: a wait that ran
	// out, Redis unreachable, or a hash collision of long keys.
	UncachedFetches uint64
	// Corrupt counts stored values that did not decode; each was treated as
	// a miss and removed.
	Corrupt uint64
	// Oversize counts fetched values too large to cache.
	Oversize uint64
	// RedisErrors counts Redis operations that failed.
	RedisErrors uint64
	// Invalidations counts keys invalidated or written by this node.
	Invalidations uint64
}

type counters struct {
	l1Hits                                                      stripedCounter
	l2Hits, fetches, fillsLanded, fillsRefused, l1FillsRefused  atomic.Uint64
	waits, uncached, corrupt, oversize, redisErrors, invalidate atomic.Uint64
}

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	c := &n.stats
	return Stats{
		L1Hits:          c.l1Hits.load(),
		L2Hits:          c.l2Hits.Load(),
		Fetches:         c.fetches.Load(),
		FillsLanded:     c.fillsLanded.Load(),
		FillsRefused:    c.fillsRefused.Load(),
		L1FillsRefused:  c.l1FillsRefused.Load(),
		Waits:           c.waits.Load(),
		UncachedFetches: c.uncached.Load(),
		Corrupt:         c.corrupt.Load(),
		Oversize:        c.oversize.Load(),
		RedisErrors:     c.redisErrors.Load(),
		Invalidations:   c.invalidate.Load(),
	}
}

// stripedCounter spreads a hot counter over cache lines, so that L1 hits on
// many cores do not contend on one.
type stripedCounter struct {
	stripes [8]struct {
		n atomic.Uint64
		_ [56]byte
	}
}

func (s *stripedCounter) add(h uint64) { s.stripes[h&7].n.Add(1) }

func (s *stripedCounter) load() uint64 {
	var sum uint64
	for i := range s.stripes {
		sum += s.stripes[i].n.Load()
	}
	return sum
}

// redisFailed counts and logs a failed Redis operation.
func (n *Node) redisFailed(op string, err error) {
	n.stats.redisErrors.Add(1)
	if !errors.Is(err, context.Canceled) {
		n.log.Warn("tiercache: redis "+op+" failed", "err", err)
	}
}
