package tier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tiercache/tiercache/l2"
)

// KeyErrors reports the keys of a batch that failed, each with its error:
// those of a GetMany or GetList, or those a FetchMany reports (see
// Missing). errors.Is and errors.As see every one of them.
type KeyErrors[K comparable] struct {
	// Errs holds the error of each failed key.
	Errs map[K]error
}

func (e *KeyErrors[K]) Error() string {
	msgs := make([]string, 0, len(e.Errs))
	for k, err := range e.Errs {
		msgs = append(msgs, fmt.Sprintf("%v: %v", k, err))
	}
	sort.Strings(msgs)
	const show = 3
	more := ""
	if len(msgs) > show {
		more = fmt.Sprintf("; and %d more", len(msgs)-show)
		msgs = msgs[:show]
	}
	noun := "keys"
	if len(e.Errs) == 1 {
		noun = "key"
	}
	return fmt.Sprintf("tier: %d %s failed: %s%s", len(e.Errs), noun, strings.Join(msgs, "; "), more)
}

// Unwrap returns every key's error.
func (e *KeyErrors[K]) Unwrap() []error {
	out := make([]error, 0, len(e.Errs))
	for _, err := range e.Errs {
		out = append(out, err)
	}
	return out
}

// miss is a key of a GetMany that L1 did not answer: its names, and, if it
// is read from Redis here, its fence and, once it goes to the read script,
// its claim token.
type miss[K comparable] struct {
	key    K
	s      string
	h      uint64
	keys   l2.Keys
	viaGet bool // read it through Get
	tok    string
	f      fence
}

// GetMany returns the values of keys: first from this node's L1, then from
// Redis (the keys this node has seen there with one MGET, the rest with the
// read script, one pipelined round trip each), then from the source:
// through Config.FetchMany in one call if it is set, else through Fetch,
// concurrently, one load per key. Every key is claimed, fenced and filled
// as by Get, with the same guarantees; a key that another claimant is
// fetching is waited for as by Get. Duplicate keys are read once.
//
// A key the source does not have is absent from the map, without an error.
// If some keys fail, GetMany returns the values of the others and a
// *KeyErrors naming each failed key (a permitted-stale value is returned
// and also reported there with ErrStale, as by Get).
func (c *Cache[K, V]) GetMany(ctx context.Context, keys []K) (_ map[K]V, err error) {
	began := c.m.start()
	out := make(map[K]V, len(keys))
	var (
		mu   sync.Mutex
		errs map[K]error // with errAnsweredNotFound for "not found", until manyResult
		last Answer      // for the span
	)
	record := func(key K, v V, ri ReadInfo, err error) {
		if herr := c.account(key, ri, err, began); herr != nil {
			err = herr
		}
		mu.Lock()
		defer mu.Unlock()
		last = answerOf(ri, err)
		if err == nil || errors.Is(err, ErrStale) {
			out[key] = v
		}
		if err != nil {
			if errs == nil {
				errs = make(map[K]error)
			}
			if errors.Is(err, ErrNotFound) {
				err = errAnsweredNotFound
			}
			errs[key] = err
		}
	}

	// L1, and the keys' names.
	n := c.node
	misses := make([]miss[K], 0, len(keys))
	seen := make(map[K]struct{}, len(keys))
	for _, key := range keys {
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		switch v, st, _ := c.fromL1(key); st {
		case l1Fresh, l1Stale, l1Negative:
			var err error
			if st == l1Negative {
				err = errCachedNotFound
			}
			record(key, v, ReadInfo{Source: SourceL1, Stale: st == l1Stale, Negative: st == l1Negative}, err)
			continue
		}
		s, h, err := c.keys.resolve(key)
		if err != nil {
			var zero V
			record(key, zero, ReadInfo{}, fmt.Errorf("tier get: %w", err))
			continue
		}
		if n.pending.blocks(c.ns, s, nil) {
			misses = append(misses, miss[K]{key: key, s: s, h: h, viaGet: true})
			continue
		}
		misses = append(misses, miss[K]{
			key: key, s: s, h: h,
			// The value's name alone: a key that goes to the read script
			// gets its other names then (full).
			keys: l2.Keys{Value: l2.ValueKey(n.cfg.Prefix, c.ns, s)},
			// Taken before the read, as by Get (R12, R13).
			f: n.fence(h),
		})
	}
	if len(misses) == 0 {
		return c.manyResult(out, errs)
	}
	if t := n.tracer; t != nil {
		var end func(Answer, error)
		ctx, end = t.StartGet(ctx, c.ns, len(misses))
		defer func() {
			a := last
			if err != nil {
				a = AnswerError
			}
			end(a, err)
		}()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if n.isClosed() {
		return nil, ErrClosed
	}

	// Redis: what it likely holds with plain commands (PeekMany), the
	// rest with the read script, which claims; one round trip each.
	var (
		toPeek   = make([]*miss[K], 0, len(misses))
		toRead   []miss[K]
		claimed  []claim[K, V] // ours to fetch and fill
		uncached []claim[K, V] // to fetch without caching
		slow     []miss[K]     // for Get: busy, corrupt, blocked, or Redis failed
	)
	for i, m := range misses {
		switch {
		case m.viaGet:
			slow = append(slow, m)
		case c.peeks(ctx, m.h, modeGet):
			toPeek = append(toPeek, &misses[i])
		default:
			toRead = append(toRead, c.full(m))
		}
	}
	if len(toPeek) > 0 {
		ks := make([]l2.Keys, len(toPeek))
		for i, m := range toPeek {
			ks[i] = m.keys
		}
		readAt := time.Now()
		reads, oks, err := n.store.PeekMany(ctx, ks, c.known, l2.Claim{Below: c.z.below})
		if err != nil {
			n.redisFailed(c.ns, "read many", err)
		}
		for i, m := range toPeek {
			if err != nil {
				slow = append(slow, *m)
				continue
			}
			if oks[i] {
				if l, ok, err := c.settlePeeked(ctx, m.key, m.s, m.h, m.keys, m.f, reads[i], readAt); ok {
					record(m.key, l.v, l.ri, err)
					continue
				}
			}
			toRead = append(toRead, c.full(*m))
		}
	}
	ks := make([]l2.Keys, len(toRead))
	toks := make([]string, len(toRead))
	for i := range toRead {
		toRead[i].tok = n.token()
		ks[i], toks[i] = toRead[i].keys, toRead[i].tok
	}
	readAt := time.Now()
	// As a Get's read (readOrClaim): if the read does not return, every
	// token is released on the way out.
	returned := false
	defer func() {
		if !returned {
			for i, k := range ks {
				c.release(ctx, k, toks[i])
			}
		}
	}()
	reads, readErrs, err := n.store.ReadOrClaimMany(context.WithoutCancel(ctx), ks, toks, n.cfg.FlagTTL, l2.Claim{Below: c.z.below})
	returned = true
	if err != nil {
		n.redisFailed(c.ns, "read many", err)
		reads, readErrs = nil, nil
	}

	// What each read leaves to do, decided as by Get.
	claimed, uncached, slow = c.settleMany(ctx, toRead, reads, readErrs, readAt, record, slow)

	// The source. The fetches are the node's work: Close cancels them and
	// waits for them, as it does a Get's.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(n.life, cancel)()
	var wg sync.WaitGroup
	// run runs f, which answers the keys of cls, in the node's background;
	// if the node is closed, it releases their claims and answers them
	// ErrClosed. A key that f leaves unanswered (it ended its goroutine,
	// runtime.Goexit, as t.FailNow in a Fetch does) gets errLoadExited,
	// never an absence that would read as "not found".
	run := func(f func(), cls []claim[K, V]) {
		wg.Add(1)
		started := n.spawn(func() {
			defer wg.Done()
			returned := false
			defer func() {
				if returned {
					return
				}
				var zero V
				for _, cl := range cls {
					mu.Lock()
					_, valued := out[cl.key]
					_, answered := errs[cl.key]
					mu.Unlock()
					if !valued && !answered {
						record(cl.key, zero, ReadInfo{}, errLoadExited)
					}
				}
			}()
			f()
			returned = true
		})
		if started {
			return
		}
		wg.Done()
		var zero V
		for _, cl := range cls {
			if cl.tok != "" && cl.clock != "" {
				c.release(ctx, cl.keys, cl.tok)
			}
			record(cl.key, zero, ReadInfo{}, ErrClosed)
		}
	}
	if len(claimed) > 0 && c.fetchMany != nil {
		run(func() { c.fetchBatch(ctx, claimed, record) }, claimed)
	} else {
		for _, cl := range claimed {
			run(func() {
				l, err := c.fetchAndFill(ctx, cl.key, cl.s, cl.h, cl.keys, cl.tok, cl.clock, cl.f, cl.fallback)
				record(cl.key, l.v, l.ri, err)
			}, []claim[K, V]{cl})
		}
	}
	for _, cl := range uncached {
		run(func() {
			l, err := c.fetchUncached(ctx, cl.key, cl.fallback)
			record(cl.key, l.v, l.ri, err)
		}, []claim[K, V]{cl})
	}
	for _, m := range slow {
		run(func() {
			v, ri, err := c.getSlow(ctx, m.key, modeGet)
			record(m.key, v, ri, err)
		}, []claim[K, V]{{miss: m}})
	}
	wg.Wait()
	return c.manyResult(out, errs)
}

// settleMany settles GetMany's reads of toRead (reads and readErrs, nil if
// the reads failed as a whole) as Get settles one: it records the answers,
// and returns the claims to fetch under, the keys to fetch without caching,
// and slow with the keys left to Get. A callback that ends the goroutine
// meanwhile (runtime.Goexit in the Codec, decoding a value Redis holds)
// leaves no claim behind: those of the keys not yet settled, and of the
// keys to fetch, are given up on the way out.
func (c *Cache[K, V]) settleMany(ctx context.Context, toRead []miss[K], reads []l2.Read, readErrs []error, readAt time.Time, record func(K, V, ReadInfo, error), slow []miss[K]) (claimed, uncached []claim[K, V], _ []miss[K]) {
	settled, returned := 0, false
	defer func() {
		if returned {
			return
		}
		for _, cl := range claimed {
			c.release(ctx, cl.keys, cl.tok)
		}
		for i := settled; i < len(toRead) && reads != nil; i++ {
			if readErrs[i] == nil && holdsClaim(reads[i]) {
				c.release(ctx, toRead[i].keys, toRead[i].tok)
			}
		}
	}()
	for i, m := range toRead {
		settled = i
		if reads == nil || readErrs[i] != nil {
			slow = append(slow, m)
			continue
		}
		var st readState[V]
		next, l, err := c.settle(ctx, m.key, m.s, m.h, m.keys, m.tok, m.f, reads[i], readAt, modeGet, &st)
		switch next {
		case stepDone:
			record(m.key, l.v, l.ri, err)
		case stepFetch:
			claimed = append(claimed, claim[K, V]{m, reads[i].Clock, st.fallback})
		case stepUncached:
			uncached = append(uncached, claim[K, V]{miss: m, fallback: st.fallback})
		default:
			slow = append(slow, m) // Get waits, or reads again
		}
	}
	returned = true
	return claimed, uncached, slow
}

// GetList returns the values of keys in their order, read as GetMany
// reads them: one Redis round trip for what L1 lacks, one FetchMany call
// (or a Fetch per key) for what neither tier holds. A key that failed, or
// that the source does not have, has the zero value at its place, and its
// error (wrapping ErrNotFound for "not found", ErrStale beside a stale
// value) in the returned *KeyErrors. An error that is not a *KeyErrors
// (ctx's, ErrClosed) comes with no values.
func (c *Cache[K, V]) GetList(ctx context.Context, keys []K) ([]V, error) {
	found, err := c.GetMany(ctx, keys)
	var ke *KeyErrors[K]
	if err != nil && !errors.As(err, &ke) {
		return nil, err
	}
	errs := make(map[K]error)
	if ke != nil {
		maps.Copy(errs, ke.Errs)
	}
	out := make([]V, len(keys))
	for i, k := range keys {
		if v, ok := found[k]; ok {
			out[i] = v
		} else if _, failed := errs[k]; !failed {
			errs[k] = errCachedNotFoundInList
		}
	}
	if len(errs) > 0 {
		return out, &KeyErrors[K]{Errs: errs}
	}
	return out, nil
}

// errCachedNotFoundInList is GetList's error for a key the source lacks.
var errCachedNotFoundInList = fmt.Errorf("tier get list: %w", ErrNotFound)

// full returns m with every Redis name of its key, for the read script.
func (c *Cache[K, V]) full(m miss[K]) miss[K] {
	m.keys = l2.KeysFor(c.node.cfg.Prefix, c.ns, m.s)
	return m
}

// claim is a key of a GetMany to fetch: claimed under clock, or uncached,
// with the value Redis held as the fail-safe fallback, if any.
type claim[K comparable, V any] struct {
	miss[K]
	clock    string
	fallback *staleValue[V]
}

func (c *Cache[K, V]) manyResult(out map[K]V, errs map[K]error) (map[K]V, error) {
	for k, err := range errs {
		if err == errAnsweredNotFound {
			delete(errs, k) // "not found" is no error of GetMany's
		}
	}
	if len(errs) > 0 {
		return out, &KeyErrors[K]{Errs: errs}
	}
	return out, nil
}

// fetchBatch reads the claimed keys through Config.FetchMany in one call,
// then settles each key's result as Get settles a fetch's: its value, its
// error in a *KeyErrors (ErrNotFound for "not found"), or the whole call's
// error. If a callback ends the goroutine instead (runtime.Goexit), every
// claim still ours is released on the way out, as in fetchAndFill.
func (c *Cache[K, V]) fetchBatch(ctx context.Context, claimed []claim[K, V], record func(K, V, ReadInfo, error)) {
	keys := make([]K, len(claimed))
	fallback := false
	for i, cl := range claimed {
		keys[i] = cl.key
		fallback = fallback || cl.fallback != nil
	}
	fctx, cancel := c.fetchContext(ctx, fallback)
	defer cancel()
	settled := 0 // claims settled, in order: the rest are still ours
	defer func() {
		for _, cl := range claimed[settled:] {
			c.release(ctx, cl.keys, cl.tok)
		}
	}()
	found, perKey, err := c.callFetchMany(fctx, keys)
	for _, cl := range claimed {
		var v V
		kerr := err
		if kerr == nil {
			var ok bool
			if kerr, ok = perKey[cl.key]; !ok {
				if v, ok = found[cl.key]; !ok {
					kerr = errNoAnswer
				}
			}
		}
		l, ferr := c.fetched(ctx, cl.key, cl.s, cl.h, cl.keys, cl.tok, cl.clock, cl.f, cl.fallback, v, kerr)
		settled++
		record(cl.key, l.v, l.ri, ferr)
	}
}

// errAnsweredNotFound marks, among GetMany's errors until it returns, a key
// answered "not found": no error of GetMany's, but an answer, which a
// fetch that ends its goroutine must not replace.
var errAnsweredNotFound = errors.New("tier get: answered \"not found\"")

// errNoAnswer is the error of a key that FetchMany gave neither a value
// nor an error.
var errNoAnswer = errors.New("tier get: FetchMany returned neither a value nor an error for the key (say \"not found\" with tier.Missing)")

// callFetchMany calls FetchMany: it returns the values found, the errors of
// single keys (a *KeyErrors that FetchMany returned), or the error of the
// whole call; a panic is an error wrapping ErrFetchPanic.
func (c *Cache[K, V]) callFetchMany(ctx context.Context, keys []K) (found map[K]V, perKey map[K]error, err error) {
	start := c.m.fetching()
	ctx, end := c.startFetch(ctx, len(keys))
	defer func() {
		if r := recover(); r != nil {
			found, err = nil, fmt.Errorf("%w (%w)", ErrFetchPanic, c.node.panicked("FetchMany", c.ns, r))
		}
		var ke *KeyErrors[K]
		if errors.As(err, &ke) && err == error(ke) {
			perKey, err = ke.Errs, nil
		}
		c.m.fetched(err, len(keys), start)
		end(err)
	}()
	err = errLoadExited // until FetchMany returns, as in callFetch
	found, err = c.fetchMany(ctx, keys)
	return found, nil, err
}

// Missing returns what FetchMany returns to say that every key of keys
// that found lacks is not found: a *KeyErrors that maps each of them to
// ErrNotFound, or nil if found has them all. Typical use:
//
//	rows, err := db.LoadUsers(ctx, ids)
//	if err != nil {
//		return nil, err
//	}
//	return rows, tier.Missing(ids, rows)
func Missing[K comparable, V any](keys []K, found map[K]V) error {
	var errs map[K]error
	for _, k := range keys {
		if _, ok := found[k]; ok {
			continue
		}
		if errs == nil {
			errs = make(map[K]error)
		}
		errs[k] = errNotFoundByFetchMany
	}
	if errs == nil {
		return nil
	}
	return &KeyErrors[K]{Errs: errs}
}

// errNotFoundByFetchMany is the error Missing gives each key it reports.
var errNotFoundByFetchMany = fmt.Errorf("tier get: %w", ErrNotFound)
