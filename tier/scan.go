package tier

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/l2"
)

const (
	// scanCount is the COUNT hint of each SCAN call: about how many slots
	// of the keyspace Redis visits per call, so that no call blocks it for
	// long.
	scanCount = 512
	// invalidateBatchKeys bounds the keys of one atomic delete and
	// announcement of InvalidatePattern, so that neither the script nor the
	// message holds Redis for long.
	invalidateBatchKeys = 256
	// resolveBatch bounds the hashed names whose envelopes are read in one
	// pipeline: each envelope may be as large as MaxValueBytes.
	resolveBatch = 16
)

// Keys returns the string form of every key of the cache's namespace that
// Redis holds, for operators: inspecting a cache, exporting it, choosing
// what to invalidate. It reads Redis only: a key held only in some node's
// L1 (its Redis entry evicted under memory pressure) is not listed. It
// costs O(keyspace): it walks the whole of Redis with SCAN, COUNT 512,
// matching the namespace's value names server-side, never with KEYS, so
// that no call blocks Redis for long. A key longer than 128 bytes is named by its hash in Redis: its
// full form is read from the stored envelope (one GET per such key); one
// that vanished or does not decode is skipped.
//
// SCAN's guarantee is the iteration's: every key present in Redis from the
// start of the iteration to its end is yielded at least once; a key written
// or deleted meanwhile may or may not be. A key may be yielded more than
// once (SCAN repeats elements when Redis resizes its table): Keys does not
// deduplicate, since that would cost memory in proportion to the keyspace;
// a consumer that needs each key once keeps its own set.
//
// Breaking out of the loop stops the scan. If ctx ends, the iteration
// yields ctx.Err() once and stops; if Redis fails, it yields the error
// once and stops; on a closed node it yields ErrClosed. The yielded key is
// "" whenever the error is not nil.
func (c *Cache[K, V]) Keys(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		n := c.node
		if n.isClosed() {
			yield("", ErrClosed)
			return
		}
		stopped := false // the consumer broke out: yield no more
		err := n.scanValues(ctx, l2.ValueKeyPattern(n.cfg.Prefix, c.ns),
			func(ns string) bool { return ns == c.ns },
			func(keys []scannedKey) bool {
				for _, k := range keys {
					// Checked before each key, not only each page: a consumer
					// that cancels ctx in its loop body stops at once.
					if ctx.Err() != nil {
						return false
					}
					if !yield(k.key, nil) {
						stopped = true
						return false
					}
				}
				return true
			}, nil)
		switch {
		case stopped:
		case ctx.Err() != nil:
			yield("", ctx.Err())
		case err != nil:
			yield("", fmt.Errorf("tier keys: %w", err))
		}
	}
}

// InvalidatePattern invalidates, on every node, every key whose
// "<namespace>:<key>" matches pattern, and returns how many keys it
// invalidated. It is for operators, and costs O(keyspace): it walks the
// whole of Redis with SCAN (COUNT 512, never KEYS), matching the names in
// this process, and invalidates the matches in batches of up to 256 keys,
// each one atomic delete and announcement as Cache.Invalidate makes it, so
// that every node evicts its L1 copies and no call holds Redis for long. It
// matches what Redis holds, values and claims alike, so that no fill in
// flight when it returns can land afterwards (a long key's claim, which
// names only the key's hash, is dropped if its namespace can match); a key
// cached only in some node's L1 (its Redis entry evicted under memory
// pressure) is not seen, and lives there until its L1TTL. A key whose value
// and claim fall in different SCAN pages is counted twice. Keys longer than 128 bytes are named by their hash in Redis:
// one whose namespace the pattern can match is read (one GET) for its full
// form.
//
// The pattern is Redis's glob (the syntax of KEYS and SCAN's MATCH, same
// semantics as Redis's stringmatchlen), not path.Match or filepath.Match:
// '*' matches any bytes, ':' and '/' included; '?' matches one byte; [abc]
// matches one of the bytes listed, [^abc] one byte not listed, [a-z] a
// range (inclusive, either order); a backslash makes the next byte
// literal, in or out of a class. No pattern is malformed: an unclosed class
// runs to the end of the pattern, a trailing backslash matches itself. It
// matches bytes, not runes, and is case-sensitive. Example: "users:4*"
// matches keys "4", "40" and "4x" of namespace "users", and every key of a
// namespace such as "users:4x" if one exists.
//
// SCAN's guarantee is the call's: every matching key present in Redis from
// the start of the call to its end is invalidated; one written meanwhile
// may or may not be. A key that SCAN returns twice is counted once unless
// it was filled again in between. If ctx ends or Redis fails, the call
// stops and returns the count of the batches that completed, with an error
// wrapping ErrPending: the batch in flight applied locally and is queued
// for replay, as any invalidation that cannot reach Redis. Returns ErrClosed on a closed node, and an error for an
// empty pattern.
func (n *Node) InvalidatePattern(ctx context.Context, pattern string) (int, error) {
	if pattern == "" {
		return 0, errors.New("tier invalidate pattern: empty pattern")
	}
	if n.isClosed() {
		return 0, ErrClosed
	}
	lit := globLiteralPrefix(pattern)
	var (
		total  int
		pubErr error
		batch  = make([]bus.Op, 0, invalidateBatchKeys)
		queued = make(map[scannedKey]struct{}, invalidateBatchKeys)
	)
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		for _, op := range batch {
			n.countKeys(op.Namespace, 1)
		}
		if err := n.publish(ctx, batch); err != nil {
			pubErr = err
			return false
		}
		total += len(batch)
		batch = batch[:0]
		clear(queued)
		return true
	}
	// Claims too, not only values: a fill in flight when the call returns
	// must not land (R38). A long key's claim names only the key's hash, so
	// whether the key matches cannot be told; such a claim in a namespace
	// the pattern can match is deleted, which refuses its fill and costs at
	// most a fetch.
	dropClaims := func(names []string) error {
		if err := n.del(ctx, names); err != nil {
			if ctx.Err() == nil {
				n.redisFailed("", "delete claims", err)
			}
			return err
		}
		return nil
	}
	scanErr := n.scanValues(ctx, l2.ValueOrFlagPrefixPattern(n.cfg.Prefix),
		func(ns string) bool { return invalidableNamespace(ns) && nsCanMatch(lit, ns) },
		func(keys []scannedKey) bool {
			for _, k := range keys {
				if !invalidable(k.ns, k.key) || !globMatch(pattern, k.ns+":"+k.key) {
					continue
				}
				// SCAN may return a name twice; within a batch the second
				// would be counted twice.
				if _, dup := queued[k]; dup {
					continue
				}
				queued[k] = struct{}{}
				batch = append(batch, bus.Op{Namespace: k.ns, Key: k.key})
				if len(batch) == invalidateBatchKeys && !flush() {
					return false
				}
			}
			return true
		}, dropClaims)
	if scanErr == nil && pubErr == nil {
		flush()
	}
	if err := errors.Join(scanErr, pubErr); err != nil {
		return total, fmt.Errorf("tier invalidate pattern: %w", err)
	}
	return total, nil
}

// invalidable reports whether a bus op can carry the key: a name in Redis
// that this library did not write may hold an empty or oversized part.
func invalidable(namespace, key string) bool {
	return invalidableNamespace(namespace) && key != "" && len(key) <= bus.MaxKeyBytes
}

func invalidableNamespace(namespace string) bool {
	return namespace != "" && len(namespace) <= MaxNamespaceBytes
}

// scannedKey is one key found in Redis.
type scannedKey struct {
	ns, key string
}

// scanValues walks Redis with SCAN MATCH match, COUNT scanCount, parses each
// name as a value name under the node's prefix (skipping other names), and
// calls page with the keys of each SCAN page whose namespace want accepts.
// Hashed names are resolved through their envelopes, read in pipelines of
// resolveBatch GETs; a vanished, corrupt or foreign envelope is skipped.
// It stops when page returns false (returning nil), when the scan is
// complete (nil), or with the first error (ctx's or Redis's).
//
// With claims set, flag names are parsed too: the key of a raw one goes to
// page like a value's; a hashed one (its key cannot be read back, since a
// claim has no envelope) goes to claims, by name.
//
// On a cluster it walks every master in turn.
func (n *Node) scanValues(ctx context.Context, match string, want func(ns string) bool, page func([]scannedKey) bool, claims func(names []string) error) error {
	masters, err := n.masters(ctx)
	if err != nil {
		n.redisFailed("", "scan", err)
		return err
	}
	for _, m := range masters {
		done, err := n.scanServer(ctx, m, match, want, page, claims)
		if err != nil || done {
			return err
		}
	}
	return nil
}

// masters returns the client of every master on a cluster, or the node's
// client on one server.
func (n *Node) masters(ctx context.Context) ([]redis.UniversalClient, error) {
	var (
		mu  sync.Mutex
		out []redis.UniversalClient
	)
	err := forEachMaster(ctx, n.rdb, func(_ context.Context, m redis.UniversalClient) error {
		mu.Lock()
		out = append(out, m)
		mu.Unlock()
		return nil
	})
	return out, err
}

// del deletes names: with one DEL on one server, and on a cluster in a
// pipeline of one DEL per name, since they may lie in different slots.
func (n *Node) del(ctx context.Context, names []string) error {
	if !n.store.Cluster() {
		return n.rdb.Del(ctx, names...).Err()
	}
	pipe := n.rdb.Pipeline()
	for _, name := range names {
		pipe.Del(ctx, name)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// scanServer is scanValues on one server, rdb; done reports that page
// returned false.
func (n *Node) scanServer(ctx context.Context, rdb redis.UniversalClient, match string, want func(ns string) bool, page func([]scannedKey) bool, claims func(names []string) error) (done bool, err error) {
	var (
		cursor  uint64
		keys    []scannedKey
		hashed  []scannedKey // key holds the name until resolved
		flagged []string     // hashed flag names
	)
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		names, next, err := rdb.Scan(ctx, cursor, match, scanCount).Result()
		if err != nil {
			if ctx.Err() == nil {
				n.redisFailed("", "scan", err)
			}
			return false, err
		}
		keys, hashed, flagged = keys[:0], hashed[:0], flagged[:0]
		for _, name := range names {
			kind, ns, key, isHashed, ok := l2.ParseKey(n.cfg.Prefix, name)
			switch {
			case !ok || !want(ns) || kind == 'm' || kind == 'f' && claims == nil:
			case kind == 'f' && isHashed:
				flagged = append(flagged, name)
			case isHashed:
				hashed = append(hashed, scannedKey{ns: ns, key: name})
			default:
				keys = append(keys, scannedKey{ns: ns, key: key})
			}
		}
		if keys, err = n.resolveHashed(ctx, keys, hashed); err != nil {
			return false, err
		}
		if len(flagged) > 0 {
			if err := claims(flagged); err != nil {
				return false, err
			}
		}
		if len(keys) > 0 && !page(keys) {
			return true, nil
		}
		if cursor = next; cursor == 0 {
			return false, nil
		}
	}
}

// resolveHashed appends to keys the full key of each hashed name (held in
// scannedKey.key), read from its envelope.
func (n *Node) resolveHashed(ctx context.Context, keys, hashed []scannedKey) ([]scannedKey, error) {
	for len(hashed) > 0 {
		chunk := hashed[:min(len(hashed), resolveBatch)]
		hashed = hashed[len(chunk):]
		pipe := n.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, h := range chunk {
			cmds[i] = pipe.Get(ctx, h.key)
		}
		// Exec's error is the first command's; each is looked at below.
		_, _ = pipe.Exec(ctx)
		for i, h := range chunk {
			b, err := cmds[i].Bytes()
			switch {
			case errors.Is(err, redis.Nil):
				continue // expired or deleted since SCAN returned it
			case err != nil:
				if ctx.Err() == nil {
					n.redisFailed("", "scan get", err)
				}
				return keys, err
			}
			env, err := l2.DecodeValue(b)
			// The name must be the one KeysFor gives the envelope's key: a
			// corrupt or planted envelope names nothing.
			if err != nil || l2.KeysFor(n.cfg.Prefix, h.ns, env.Key).Value != h.key {
				continue
			}
			keys = append(keys, scannedKey{ns: h.ns, key: env.Key})
		}
	}
	return keys, nil
}

// nsCanMatch reports whether some key of namespace ns may match a pattern
// whose every match starts with lit: whether lit and ns+":" agree on the
// bytes both have. It spares InvalidatePattern the GET of hashed names in
// namespaces the pattern cannot match.
func nsCanMatch(lit, ns string) bool {
	m := min(len(lit), len(ns))
	if lit[:m] != ns[:m] {
		return false
	}
	return len(lit) <= len(ns) || lit[len(ns)] == ':'
}

// globLiteralPrefix returns the bytes that every string matching pattern
// (Redis glob) starts with: the pattern up to its first '*', '?' or '[',
// with backslash escapes resolved.
func globLiteralPrefix(pattern string) string {
	b := make([]byte, 0, len(pattern))
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*', '?', '[':
			return string(b)
		case '\\':
			if i+1 < len(pattern) {
				i++
			}
			b = append(b, pattern[i])
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

// globMaxNesting is where the matcher gives up on a pattern, as Redis's
// does: a pattern with more than this many '*' matches nothing.
const globMaxNesting = 1000

// globMatch reports whether s matches pattern in Redis's glob syntax, with
// the semantics of Redis's stringmatchlen (util.c), quirks included, so
// that InvalidatePattern means what KEYS and SCAN's MATCH mean:
//
//   - '*' matches any run of bytes, '?' any one byte;
//   - '[...]' one byte of a set: listed bytes, ranges "a-z" (either order,
//     inclusive), '\x' for a literal x; '^' first negates; an unclosed set
//     runs to the end of the pattern; "[a-]" is the range a to ']';
//   - '\x' outside a set is a literal x; a trailing '\' matches itself;
//   - everything else matches itself, byte for byte, case-sensitive.
//
// Range bounds compare as C chars, which are signed on the x86-64 builds of
// Redis: a range with a bound at or above 0x80 behaves as Redis's does
// there. It is not path.Match: '*' crosses '/' and ':', and no pattern is
// an error.
func globMatch(pattern, s string) bool {
	skipLonger := false
	return globMatchAt(pattern, s, &skipLonger, 0)
}

// globMatchAt is stringmatchlen_impl. skipLonger is set once a '*' found no
// match for the rest of the pattern anywhere in the rest of s: then no
// earlier '*' can do better by matching more, which bounds the work at
// O(len(pattern) * len(s)).
func globMatchAt(p, s string, skipLonger *bool, nesting int) bool {
	if nesting > globMaxNesting {
		return false
	}
	pi, si := 0, 0
	for pi < len(p) && si < len(s) {
		switch p[pi] {
		case '*':
			for pi+1 < len(p) && p[pi+1] == '*' {
				pi++
			}
			if pi == len(p)-1 {
				return true
			}
			for si < len(s) {
				if globMatchAt(p[pi+1:], s[si:], skipLonger, nesting+1) {
					return true
				}
				if *skipLonger {
					return false
				}
				si++
			}
			*skipLonger = true
			return false
		case '?':
			si++
		case '[':
			pi++
			not := pi < len(p) && p[pi] == '^'
			if not {
				pi++
			}
			c := s[si]
			match := false
			for {
				if pi+1 < len(p) && p[pi] == '\\' {
					pi++
					if p[pi] == c {
						match = true
					}
				} else if pi < len(p) && p[pi] == ']' {
					break
				} else if pi >= len(p) {
					// Unclosed: step back so that the loop's step below
					// lands on the end.
					pi--
					break
				} else if pi+2 < len(p) && p[pi+1] == '-' {
					lo, hi, cc := int8(p[pi]), int8(p[pi+2]), int8(c)
					if lo > hi {
						lo, hi = hi, lo
					}
					pi += 2
					if cc >= lo && cc <= hi {
						match = true
					}
				} else if p[pi] == c {
					match = true
				}
				pi++
			}
			if not {
				match = !match
			}
			if !match {
				return false
			}
			si++
		case '\\':
			if pi+1 < len(p) {
				pi++
			}
			if p[pi] != s[si] {
				return false
			}
			si++
		default:
			if p[pi] != s[si] {
				return false
			}
			si++
		}
		pi++
		if si == len(s) {
			for pi < len(p) && p[pi] == '*' {
				pi++
			}
			break
		}
	}
	return pi == len(p) && si == len(s)
}
