package tier

import (
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tiercache/tiercache/internal/breaker"
)

// Counts are the counters of one Cache (Cache.Stats, Node.CacheStats) or
// of every Cache of a node (Stats.Caches), since they started. Gets is the
// sum of the answer counters L1Hits, L2Hits, StaleServed, NegativeHits,
// Misses and Errors.
type Counts struct {
	// Gets counts answers: one per Get, one per key of a GetMany.
	Gets uint64
	// L1Hits counts Gets answered with a fresh value from L1.
	L1Hits uint64
	// L2Hits counts Gets answered with a fresh value from Redis.
	L2Hits uint64
	// StaleServed counts Gets answered with a permitted-stale value
	// (ReadInfo.Stale), from either tier: stale-while-revalidate,
	// fail-safe, the loser policy, or the degraded mode of
	// NodeConfig.OutageMaxAge. They are not fresh hits, and not
	// violations: each was served within the window its Config allows.
	StaleServed uint64
	// NegativeHits counts Gets answered by a cached "not found".
	NegativeHits uint64
	// Misses counts Gets answered by the source, under a claim or not
	// (a value, or its "not found").
	Misses uint64
	// Errors counts Gets answered with an error and no value.
	Errors uint64

	// Fetches counts calls of Fetch or FetchMany (source reads).
	Fetches uint64
	// FetchErrors counts those that failed, timed out or panicked ("not
	// found" is not a failure).
	FetchErrors uint64
	// UncachedFetches counts fetches made without a claim: a wait that ran
	// out, Redis unreachable, or a hash collision of long keys.
	UncachedFetches uint64
	// FillsLanded counts values written to L2 by this node's claims.
	FillsLanded uint64
	// FillsRefused counts fills that L2 refused because the claim had been
	// invalidated, had expired, or was taken over (R01, R03, R04, R05).
	FillsRefused uint64
	// L1FillsRefused counts L1 fills refused or undone because an
	// invalidation landed since the fill's ticket was taken (R12, R13).
	L1FillsRefused uint64
	// Waits counts loads that found another claimant's flag and waited.
	Waits uint64
	// Wakeups counts waits for another claimant's value that a message
	// ended (the claimant finished, or the key was invalidated) rather than
	// the next poll.
	Wakeups uint64
	// Refreshes counts refreshes started in the background:
	// stale-while-revalidate and early refresh.
	Refreshes uint64
	// FailSafe counts fetches that failed or timed out while a stale value
	// could be served instead, and was.
	FailSafe uint64
	// OutageServed counts Gets answered from L1 in the degraded mode of
	// NodeConfig.OutageMaxAge while Redis was unreachable (also counted in
	// StaleServed).
	OutageServed uint64
	// GroupStale counts values Redis held but refused because one of their
	// groups was invalidated (or its stamp vanished) since they were filled.
	GroupStale uint64
	// Corrupt counts stored values that did not decode; each was treated as
	// a miss and removed.
	Corrupt uint64
	// Oversize counts fetched values too large to cache.
	Oversize uint64
	// BadGroups counts fetched entries not cached because of their groups
	// (they broke the rules, or Groups panicked) or their encoding (the
	// Codec failed or panicked).
	BadGroups uint64
	// Invalidations counts keys invalidated or written by this node.
	Invalidations uint64
}

// HitRatio is the share of Gets answered from a tier rather than the
// source: L1, L2, stale and cached "not found" answers over Gets; 0 before
// the first Get.
func (c Counts) HitRatio() float64 {
	if c.Gets == 0 {
		return 0
	}
	return float64(c.L1Hits+c.L2Hits+c.StaleServed+c.NegativeHits) / float64(c.Gets)
}

// add adds o's counters to c's.
func (c *Counts) add(o Counts) {
	c.Gets += o.Gets
	c.L1Hits += o.L1Hits
	c.L2Hits += o.L2Hits
	c.StaleServed += o.StaleServed
	c.NegativeHits += o.NegativeHits
	c.Misses += o.Misses
	c.Errors += o.Errors
	c.Fetches += o.Fetches
	c.FetchErrors += o.FetchErrors
	c.UncachedFetches += o.UncachedFetches
	c.FillsLanded += o.FillsLanded
	c.FillsRefused += o.FillsRefused
	c.L1FillsRefused += o.L1FillsRefused
	c.Waits += o.Waits
	c.Wakeups += o.Wakeups
	c.Refreshes += o.Refreshes
	c.FailSafe += o.FailSafe
	c.OutageServed += o.OutageServed
	c.GroupStale += o.GroupStale
	c.Corrupt += o.Corrupt
	c.Oversize += o.Oversize
	c.BadGroups += o.BadGroups
	c.Invalidations += o.Invalidations
}

// Stats is a snapshot of a node's counters since it started. Every field
// counts events on this node only.
type Stats struct {
	// Caches sums the counters of the node's Caches (and counts the keys
	// InvalidatePattern invalidated in Invalidations).
	Caches Counts
	// RedisErrors counts Redis operations that failed.
	RedisErrors uint64
	// Published counts bus messages this node published (batches).
	Published uint64
	// BusApplied counts bus messages from other nodes applied here.
	BusApplied uint64
	// BusGarbage counts malformed messages on the bus channel, ignored.
	BusGarbage uint64
	// Drops counts times this node dropped its whole L1 because it could
	// not prove it fresh (disconnect, sequence gap, lapsed lease, changed
	// fleet epoch) or was asked to (a fleet flush).
	Drops uint64
	// BusGaps, BusDisconnects, LeaseLapses and EpochChanges count the
	// drops by cause.
	BusGaps, BusDisconnects, LeaseLapses, EpochChanges uint64
	// LeaseRenewals counts lease renewals.
	LeaseRenewals uint64
	// BusReplacements counts subscription connections replaced because
	// they went silent (no message, pong or error for a lease) while no
	// lease ran: a connection dead without knowing it.
	BusReplacements uint64
	// GroupInvalidations counts group invalidations applied on this node,
	// its own and other nodes'.
	GroupInvalidations uint64
	// BreakerOpens counts the openings of the node's Redis circuit breaker;
	// BreakerOpen says whether it is open (or letting one probe through)
	// now.
	BreakerOpens uint64
	BreakerOpen  bool
	// Pending is the number of invalidations not yet in Redis (queued or
	// being replayed);
	// Replayed counts those replayed so far; PendingOverflow counts those
	// that did not fit and were escalated to their whole namespace.
	Pending, Replayed, PendingOverflow uint64
	// L1Bytes is the cost L1 holds now, out of L1MaxBytes (values'
	// encoded size plus keys plus per-entry overhead; L1 applies new
	// entries from a buffer, so this lags fills a little). L1Evictions
	// counts entries L1 evicted to make room or expired.
	L1Bytes, L1MaxBytes, L1Evictions uint64
	// RecorderPanics counts calls of NodeConfig.Recorder or Tracer, or of
	// NodeConfig.Logger's handler, that panicked.
	RecorderPanics uint64
}

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	c := &n.stats
	st := Stats{
		RedisErrors:        c.redisErrors.Load(),
		Published:          c.published.Load(),
		Drops:              c.drops.Load(),
		GroupInvalidations: c.groupInvalidations.Load(),
		BreakerOpens:       c.breakerOpens.Load(),
		BreakerOpen:        n.breaker.State() != breaker.Closed,
		Pending:            uint64(n.pending.waiting()),
		Replayed:           c.replayed.Load(),
		PendingOverflow:    n.pending.overflows(),
		RecorderPanics:     c.recorderPanics.Load(),
	}
	st.Caches.Invalidations = c.invalidate.Load()
	for _, cs := range n.CacheStats() {
		st.Caches.add(cs)
	}
	l1s := n.l1.Stats()
	st.L1Bytes, st.L1MaxBytes, st.L1Evictions = uint64(l1s.Cost), uint64(l1s.MaxCost), l1s.Evictions
	bc := n.sub.Counters()
	st.BusApplied, st.BusGarbage, st.BusGaps = bc.Applied, bc.Garbage, bc.Gaps
	st.BusDisconnects, st.LeaseLapses, st.EpochChanges = bc.Disconnects, bc.Lapses, bc.EpochChanges
	st.LeaseRenewals, st.BusReplacements = bc.Renewals, bc.Replacements
	return st
}

// CacheStats returns a snapshot of the counters of each of the node's
// Caches, by namespace: each namespace's figures, without an exporter.
func (n *Node) CacheStats() map[string]Counts {
	n.mu.Lock()
	meters := make([]*meter, 0, len(n.caches))
	for _, c := range n.caches {
		meters = append(meters, c.meter())
	}
	n.mu.Unlock()
	out := make(map[string]Counts, len(meters))
	for _, m := range meters {
		out[m.ns] = m.snapshot()
	}
	return out
}

// Stats returns a snapshot of this Cache's counters.
func (c *Cache[K, V]) Stats() Counts { return c.m.snapshot() }

// counters are the node's own counters; those of its Caches are in their
// meters.
type counters struct {
	redisErrors, published, drops, groupInvalidations atomic.Uint64
	breakerOpens, replayed, recorderPanics            atomic.Uint64
	// invalidate counts keys invalidated by InvalidatePattern, which
	// belong to no one Cache.
	invalidate atomic.Uint64
}

// meter counts the events of one Cache, and reports them to the node's
// Recorder if it has one.
type meter struct {
	answers answerCounts // first: its stripes start a cache line

	ns  string
	rec Recorder // nil: none

	fetches, fetchErrors, uncached, fillsLanded, fillsRefused atomic.Uint64
	l1FillsRefused, waits, wakeups, refreshes, failSafe       atomic.Uint64
	outageServed, groupStale, corrupt, oversize, badGroups    atomic.Uint64
	invalidations                                             atomic.Uint64
}

func newMeter(ns string, rec Recorder) *meter { return &meter{ns: ns, rec: rec} }

// start returns the time a Get begins, if a Recorder will want its
// latency; the zero Time otherwise, so that no Get reads the clock for
// nothing.
func (m *meter) start() time.Time {
	if m.rec == nil {
		return time.Time{}
	}
	return time.Now()
}

// hitL1 counts a fresh L1 hit of Get's fast path.
func (m *meter) hitL1(start time.Time) {
	m.answers.add(AnswerL1)
	if m.rec != nil {
		m.rec.Get(m.ns, AnswerL1, time.Since(start))
	}
}

// answer counts the answer to one Get, begun at start.
func (m *meter) answer(a Answer, start time.Time) {
	m.answers.add(a)
	if m.rec != nil {
		m.rec.Get(m.ns, a, time.Since(start))
	}
}

// fetching counts a call of the source as it begins, and returns the time.
func (m *meter) fetching() time.Time {
	m.fetches.Add(1)
	return time.Now()
}

// fetched counts how a call of the source, for keys keys, begun at start,
// ended.
func (m *meter) fetched(err error, keys int, start time.Time) {
	o := fetchOutcome(err)
	if o != FetchSuccess && o != FetchNotFound {
		m.fetchErrors.Add(1)
	}
	if m.rec != nil {
		m.rec.Fetch(m.ns, o, keys, time.Since(start))
	}
}

// fill counts what became of a value offered to the tiers.
func (m *meter) fill(r FillResult) {
	switch r {
	case FillLanded:
		m.fillsLanded.Add(1)
	case FillRefused:
		m.fillsRefused.Add(1)
	case FillFenced:
		m.l1FillsRefused.Add(1)
	case FillUncacheable:
		m.badGroups.Add(1)
	case FillOversize:
		m.oversize.Add(1)
	}
	if m.rec != nil {
		m.rec.Fill(m.ns, r)
	}
}

// waited counts the end of one wait for another claimant's value.
func (m *meter) waited(w WakeSource, start time.Time) {
	if w == WakeMessage {
		m.wakeups.Add(1)
	}
	if m.rec != nil {
		m.rec.Wait(m.ns, w, time.Since(start))
	}
}

// published counts invalidations this Cache made.
func (m *meter) published(s Scope, n int) {
	if s == ScopeKeys {
		m.invalidations.Add(uint64(n))
	}
	if m.rec != nil {
		m.rec.Published(m.ns, s, n)
	}
}

// snapshot returns the meter's counters.
func (m *meter) snapshot() Counts {
	c := Counts{
		L1Hits:          m.answers.load(AnswerL1),
		L2Hits:          m.answers.load(AnswerL2),
		StaleServed:     m.answers.load(AnswerStale),
		NegativeHits:    m.answers.load(AnswerNegative),
		Misses:          m.answers.load(AnswerFetch) + m.answers.load(AnswerUncached),
		Errors:          m.answers.load(AnswerError),
		Fetches:         m.fetches.Load(),
		FetchErrors:     m.fetchErrors.Load(),
		UncachedFetches: m.uncached.Load(),
		FillsLanded:     m.fillsLanded.Load(),
		FillsRefused:    m.fillsRefused.Load(),
		L1FillsRefused:  m.l1FillsRefused.Load(),
		Waits:           m.waits.Load(),
		Wakeups:         m.wakeups.Load(),
		Refreshes:       m.refreshes.Load(),
		FailSafe:        m.failSafe.Load(),
		OutageServed:    m.outageServed.Load(),
		GroupStale:      m.groupStale.Load(),
		Corrupt:         m.corrupt.Load(),
		Oversize:        m.oversize.Load(),
		BadGroups:       m.badGroups.Load(),
		Invalidations:   m.invalidations.Load(),
	}
	c.Gets = c.L1Hits + c.L2Hits + c.StaleServed + c.NegativeHits + c.Misses + c.Errors
	return c
}

// answerCounts counts a Cache's answers, one counter per Answer, spread
// over stripes of one cache line each (the counters of every Answer), so
// that Gets on many cores do not contend on one line. A goroutine adds to
// the stripe its stack picks: goroutines running at once on different
// cores have different stacks, so each core writes lines of its own. (A
// stripe picked by the key's hash, as it once was for L1 hits, sent every
// line back and forth between the cores: each core wrote every stripe in
// turn.)
type answerCounts struct {
	stripes [counterStripes][8]atomic.Uint64
}

// counterStripes is the stripes of an answerCounts: 4 KiB a Cache. Two
// goroutines share a stripe with odds of 1 in 64.
const counterStripes = 64

// The Answers fit one stripe.
var _ [8 - AnswerError - 1]struct{}

func (c *answerCounts) add(a Answer) {
	var anchor byte
	// The address of a local variable names the goroutine's stack; it is
	// read, never dereferenced, so anchor stays on the stack. A stack that
	// grows moves, and its goroutine moves to another stripe: any stripe
	// counts the same.
	sp := uint64(uintptr(unsafe.Pointer(&anchor)))
	c.stripes[(sp>>10)*0x9e3779b97f4a7c15>>(64-6)][a].Add(1)
}

func (c *answerCounts) load(a Answer) uint64 {
	var sum uint64
	for i := range c.stripes {
		sum += c.stripes[i][a].Load()
	}
	return sum
}

// guardedRecorder calls a Recorder, recovering its panics: a metrics
// adapter must not crash a Get.
type guardedRecorder struct {
	r Recorder
	n *Node
}

// recovered ends a call of the Recorder that panicked. It must be the
// deferred function itself, for recover to see the panic.
func (g guardedRecorder) recovered(method string) {
	if r := recover(); r != nil {
		g.n.observerPanicked(method, r)
	}
}

// observerPanicked counts a panic of the Recorder or the Tracer, and logs
// the first only, since a broken one would log on every request.
func (n *Node) observerPanicked(method string, r any) {
	if n.stats.recorderPanics.Add(1) == 1 {
		n.log.Error("tiercache: a Recorder or Tracer panicked; its events are lost, and further panics are counted (Stats.RecorderPanics), not logged", "method", method, "panic", r)
	}
}

func (g guardedRecorder) Get(ns string, a Answer, d time.Duration) {
	defer g.recovered("Get")
	g.r.Get(ns, a, d)
}

func (g guardedRecorder) Fetch(ns string, o FetchOutcome, keys int, d time.Duration) {
	defer g.recovered("Fetch")
	g.r.Fetch(ns, o, keys, d)
}

func (g guardedRecorder) Fill(ns string, r FillResult) {
	defer g.recovered("Fill")
	g.r.Fill(ns, r)
}

func (g guardedRecorder) Wait(ns string, w WakeSource, d time.Duration) {
	defer g.recovered("Wait")
	g.r.Wait(ns, w, d)
}

func (g guardedRecorder) Published(ns string, s Scope, n int) {
	defer g.recovered("Published")
	g.r.Published(ns, s, n)
}

func (g guardedRecorder) Applied(ns string, s Scope, n int, delay time.Duration) {
	defer g.recovered("Applied")
	g.r.Applied(ns, s, n, delay)
}

func (g guardedRecorder) Lease(e LeaseEvent) {
	defer g.recovered("Lease")
	g.r.Lease(e)
}

func (g guardedRecorder) Dropped(reason DropReason) {
	defer g.recovered("Dropped")
	g.r.Dropped(reason)
}

func (g guardedRecorder) Breaker(open bool) {
	defer g.recovered("Breaker")
	g.r.Breaker(open)
}

func (g guardedRecorder) Replayed(n int) {
	defer g.recovered("Replayed")
	g.r.Replayed(n)
}

func (g guardedRecorder) RedisError(ns, op string, kind RedisErrorKind) {
	defer g.recovered("RedisError")
	g.r.RedisError(ns, op, kind)
}

func (g guardedRecorder) Resource(name string, e ResourceEvent, d time.Duration) {
	defer g.recovered("Resource")
	g.r.Resource(name, e, d)
}
