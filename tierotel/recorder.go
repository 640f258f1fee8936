package tierotel

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tiercache/tiercache/tier"
)

// durationBounds are the explicit bucket boundaries of every duration
// histogram, in seconds: 1µs to 10s in steps of ×2 and ×2.5, so that an L1
// hit (a few hundred nanoseconds), a Redis round trip (a fraction of a
// millisecond) and a slow source (seconds) each fall in buckets of their
// own. They are advice (metric.WithExplicitBucketBoundaries): a View of the
// SDK may replace them.
var durationBounds = []float64{
	1e-6, 2.5e-6, 5e-6,
	1e-5, 2.5e-5, 5e-5,
	1e-4, 2.5e-4, 5e-4,
	1e-3, 2.5e-3, 5e-3,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5, 10,
}

// bg is the context of every measurement: the Recorder's methods carry
// none, so measurements have no exemplars.
var bg = context.Background()

// Recorder is a tier.Recorder that records a node's events in OpenTelemetry
// instruments; set it as tier.NodeConfig.Recorder, one Recorder per Node.
// Observe adds the instruments read from the node's Stats at collection.
// It is safe for concurrent use.
type Recorder struct {
	meter metric.Meter
	base  []attribute.KeyValue // WithAttributes, on every measurement

	getDur, fetchDur, waitDur, delay         metric.Float64Histogram
	fetchKeys, fills, published, applied     metric.Int64Counter
	replayed, lease, drops, breaker, redisEr metric.Int64Counter
	resEvents                                metric.Int64Counter
	resDur                                   metric.Float64Histogram

	pending, l1Usage, l1Limit, breakerOpen              metric.Int64ObservableUpDownCounter
	overflows, l1Evictions, refreshes, failSafe, outage metric.Int64ObservableCounter
	rejects, recorderPanics                             metric.Int64ObservableCounter

	node       nodeOpts
	namespaces setCache[string, *nsOpts]
	resources  setCache[string, *resOpts]
	redisOps   setCache[redisOp, [][]metric.AddOption]
}

// nsOpts are the measurement options of one namespace ("" for events that
// belong to none), one per value of each enum, built once so that
// recording an event does not allocate.
type nsOpts struct {
	get       [][]metric.RecordOption // by tier.Answer
	fetchRec  [][]metric.RecordOption // by tier.FetchOutcome
	fetchAdd  [][]metric.AddOption    // by tier.FetchOutcome
	fill      [][]metric.AddOption    // by tier.FillResult
	wait      [][]metric.RecordOption // by tier.WakeSource
	published [][]metric.AddOption    // by tier.Scope
	applied   [][]metric.AddOption    // by tier.Scope
	obs       []metric.ObserveOption  // the namespace alone, for Observe
	rejects   [2][]metric.ObserveOption
}

// nodeOpts are the measurement options of the node's own events.
type nodeOpts struct {
	base    []metric.AddOption
	obs     []metric.ObserveOption
	lease   [][]metric.AddOption    // by tier.LeaseEvent
	drops   [][]metric.AddOption    // by tier.DropReason
	breaker [2][]metric.AddOption   // closed, open
	delay   [][]metric.RecordOption // by tier.Scope
}

type redisOp struct{ namespace, op string }

// NewRecorder returns a Recorder whose instruments come from the Meter
// named ScopeName of the MeterProvider of WithMeterProvider (default: the
// global one). It fails if an option is invalid or an instrument cannot be
// made.
func NewRecorder(opts ...Option) (*Recorder, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	r := &Recorder{
		meter: cfg.mp.Meter(ScopeName),
		base:  append([]attribute.KeyValue(nil), cfg.attrs...),
	}
	if err := r.instruments(); err != nil {
		return nil, err
	}
	r.namespaces.build = r.nsOpts
	r.resources.build = r.resOpts
	r.redisOps.build = r.redisOpts
	r.node = r.nodeOpts()
	return r, nil
}

// instruments makes every instrument of the Recorder.
func (r *Recorder) instruments() error {
	m := r.meter
	var errs []error
	hist := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(durationBounds...))
		errs = append(errs, err)
		return h
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		g, err := m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	observed := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}

	r.getDur = hist(MetricGetDuration, "Duration of a Get (or of one key of a GetMany), by how it was answered; its count is the number of answers by tier.")
	r.fetchDur = hist(MetricFetchDuration, "Duration of a call of the source (Fetch or FetchMany), by outcome.")
	r.fetchKeys = counter(MetricFetchKeys, "{key}", "Keys asked of the source, by outcome of the call.")
	r.fills = counter(MetricFills, "{fill}", "Fetched values (or not-founds) offered to the tiers, by what became of them.")
	r.waitDur = hist(MetricWaitDuration, "Duration of a wait for another claimant's value, by how it ended.")
	r.published = counter(MetricInvalidationsPublished, "{invalidation}", "Invalidations this node made, by scope, whether they reached Redis at once or were queued.")
	r.applied = counter(MetricInvalidationsApplied, "{invalidation}", "Invalidations other nodes published that this node applied, by scope.")
	r.delay = hist(MetricInvalidationDelay, "Delay from Redis announcing an invalidation message to this node applying it, on Redis's clock, by scope; once per message part whose delay is known.")
	r.replayed = counter(MetricInvalidationsReplayed, "{invalidation}", "Invalidations queued while Redis was unreachable that landed in Redis on replay.")
	r.lease = counter(MetricLeaseEvents, "{event}", "Renewals and lapses of the node's bus lease.")
	r.drops = counter(MetricL1Drops, "{drop}", "Times the node made its whole L1 unservable, by reason.")
	r.breaker = counter(MetricBreakerTransitions, "{transition}", "Transitions of the node's Redis circuit breaker, by the state entered.")
	r.redisEr = counter(MetricRedisErrors, "{error}", "Failed Redis operations, by operation and kind of failure.")
	r.resEvents = counter(MetricResourceEvents, "{event}", "Events of a Resource: loads from the source (success, load_error), data sets taken from Redis (fetched), failed Redis operations (redis_error).")
	r.resDur = hist(MetricResourceLoadDuration, "Duration of a Resource's load from the source, by success or load_error.")

	r.pending = gauge(MetricInvalidationPending, "{invalidation}", "Invalidations not yet in Redis: queued while it was unreachable, or being replayed.")
	r.overflows = observed(MetricInvalidationOverflows, "{invalidation}", "Queued invalidations that did not fit the queue and were escalated to their whole namespace.")
	r.l1Usage = gauge(MetricL1Usage, "By", "Cost L1 holds: values' encoded size plus keys plus per-entry overhead.")
	r.l1Limit = gauge(MetricL1Limit, "By", "Bound of L1's cost (NodeConfig.L1MaxBytes).")
	r.l1Evictions = observed(MetricL1Evictions, "{entry}", "Entries L1 evicted to make room, or expired.")
	r.breakerOpen = gauge(MetricBreakerOpen, "{breaker}", "1 while the node's Redis circuit breaker is open or letting a probe through, 0 while it is closed.")
	r.refreshes = observed(MetricRefreshes, "{refresh}", "Background refreshes started (stale-while-revalidate, early refresh).")
	r.failSafe = observed(MetricFailSafeFetches, "{fetch}", "Fetches that failed or timed out and were answered with a kept stale value instead.")
	r.outage = observed(MetricOutageAnswers, "{answer}", "Gets answered from L1 in the degraded mode while Redis was unreachable (also counted as stale answers).")
	r.rejects = observed(MetricL2Rejects, "{value}", "Values Redis held that were not served, by reason: a group invalidated since the fill, or an encoding that did not decode.")
	r.recorderPanics = observed(MetricRecorderPanics, "{panic}", "Calls of the node's Recorder or Tracer that panicked; their events are lost.")
	return errors.Join(errs...)
}

// set returns the attribute set of the Recorder's attributes and kvs.
func (r *Recorder) set(kvs ...attribute.KeyValue) attribute.Set {
	all := make([]attribute.KeyValue, 0, len(r.base)+len(kvs))
	return attribute.NewSet(append(append(all, r.base...), kvs...)...)
}

func addOpts(s attribute.Set) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(s)}
}

func recOpts(s attribute.Set) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(s)}
}

func obsOpts(s attribute.Set) []metric.ObserveOption {
	return []metric.ObserveOption{metric.WithAttributeSet(s)}
}

// nsAttr returns the namespace's attribute, none for "".
func nsAttr(ns string) []attribute.KeyValue {
	if ns == "" {
		return nil
	}
	return []attribute.KeyValue{KeyNamespace.String(ns)}
}

// with returns kvs followed by kv, in a new slice.
func with(kvs []attribute.KeyValue, kv ...attribute.KeyValue) []attribute.KeyValue {
	return append(append(make([]attribute.KeyValue, 0, len(kvs)+len(kv)), kvs...), kv...)
}

// Enum tables are sized by the last value the core defines today; a value
// a later core adds past it is looked up by its String, at the cost of an
// allocation, until this package knows it.
const (
	answers   = int(tier.AnswerError) + 1
	outcomes  = int(tier.FetchCanceled) + 1
	results   = int(tier.FillFailed) + 1
	wakes     = int(tier.WakeCanceled) + 1
	scopes    = int(tier.ScopeFleet) + 1
	leases    = int(tier.LeaseLapsed) + 1
	reasons   = int(tier.DropOther) + 1
	redisKind = int(tier.RedisOtherError) + 1
)

func (r *Recorder) nsOpts(ns string) *nsOpts {
	kv := nsAttr(ns)
	o := &nsOpts{
		get:       make([][]metric.RecordOption, answers),
		fetchRec:  make([][]metric.RecordOption, outcomes),
		fetchAdd:  make([][]metric.AddOption, outcomes),
		fill:      make([][]metric.AddOption, results),
		wait:      make([][]metric.RecordOption, wakes),
		published: make([][]metric.AddOption, scopes),
		applied:   make([][]metric.AddOption, scopes),
		obs:       obsOpts(r.set(kv...)),
	}
	for i := range o.get {
		o.get[i] = recOpts(r.set(with(kv, KeyAnswer.String(tier.Answer(i).String()))...))
	}
	for i := range o.fetchRec {
		s := r.set(with(kv, KeyFetchOutcome.String(tier.FetchOutcome(i).String()))...)
		o.fetchRec[i], o.fetchAdd[i] = recOpts(s), addOpts(s)
	}
	for i := range o.fill {
		o.fill[i] = addOpts(r.set(with(kv, KeyFillResult.String(tier.FillResult(i).String()))...))
	}
	for i := range o.wait {
		o.wait[i] = recOpts(r.set(with(kv, KeyWake.String(tier.WakeSource(i).String()))...))
	}
	for i := range o.published {
		s := r.set(with(kv, KeyScope.String(tier.Scope(i).String()))...)
		o.published[i], o.applied[i] = addOpts(s), addOpts(s)
	}
	o.rejects[0] = obsOpts(r.set(with(kv, KeyRejectReason.String("group_stale"))...))
	o.rejects[1] = obsOpts(r.set(with(kv, KeyRejectReason.String("corrupt"))...))
	return o
}

func (r *Recorder) nodeOpts() nodeOpts {
	base := r.set()
	o := nodeOpts{
		base:  addOpts(base),
		obs:   obsOpts(base),
		lease: make([][]metric.AddOption, leases),
		drops: make([][]metric.AddOption, reasons),
		delay: make([][]metric.RecordOption, scopes),
	}
	for i := range o.lease {
		o.lease[i] = addOpts(r.set(KeyLeaseEvent.String(tier.LeaseEvent(i).String())))
	}
	for i := range o.drops {
		o.drops[i] = addOpts(r.set(KeyDropReason.String(tier.DropReason(i).String())))
	}
	o.breaker[0] = addOpts(r.set(KeyBreakerState.String("closed")))
	o.breaker[1] = addOpts(r.set(KeyBreakerState.String("open")))
	for i := range o.delay {
		o.delay[i] = recOpts(r.set(KeyScope.String(tier.Scope(i).String())))
	}
	return o
}

func (r *Recorder) redisOpts(k redisOp) [][]metric.AddOption {
	kv := with(nsAttr(k.namespace), KeyRedisOp.String(k.op))
	o := make([][]metric.AddOption, redisKind)
	for i := range o {
		o[i] = addOpts(r.set(with(kv, KeyErrorType.String(tier.RedisErrorKind(i).String()))...))
	}
	return o
}

// Get records the duration of one Get in tiercache.get.duration, by
// namespace and answer.
func (r *Recorder) Get(namespace string, a tier.Answer, d time.Duration) {
	o := r.namespaces.get(namespace)
	opts := r.rec(o.get, int(a), namespace, KeyAnswer.String(a.String()))
	r.getDur.Record(bg, d.Seconds(), opts...)
}

// Fetch records one call of the source in tiercache.fetch.duration and its
// keys in tiercache.fetch.keys, by namespace and outcome.
func (r *Recorder) Fetch(namespace string, o tier.FetchOutcome, keys int, d time.Duration) {
	ns := r.namespaces.get(namespace)
	if int(o) < len(ns.fetchRec) {
		r.fetchDur.Record(bg, d.Seconds(), ns.fetchRec[o]...)
		r.fetchKeys.Add(bg, int64(keys), ns.fetchAdd[o]...)
		return
	}
	s := r.set(with(nsAttr(namespace), KeyFetchOutcome.String(o.String()))...)
	r.fetchDur.Record(bg, d.Seconds(), metric.WithAttributeSet(s))
	r.fetchKeys.Add(bg, int64(keys), metric.WithAttributeSet(s))
}

// Fill counts one fill in tiercache.fills, by namespace and result.
func (r *Recorder) Fill(namespace string, res tier.FillResult) {
	o := r.namespaces.get(namespace)
	r.fills.Add(bg, 1, r.add(o.fill, int(res), namespace, KeyFillResult.String(res.String()))...)
}

// Wait records one wait in tiercache.wait.duration, by namespace and how it
// ended.
func (r *Recorder) Wait(namespace string, w tier.WakeSource, d time.Duration) {
	o := r.namespaces.get(namespace)
	r.waitDur.Record(bg, d.Seconds(), r.rec(o.wait, int(w), namespace, KeyWake.String(w.String()))...)
}

// Published adds n to tiercache.invalidations.published, by namespace and
// scope.
func (r *Recorder) Published(namespace string, s tier.Scope, n int) {
	o := r.namespaces.get(namespace)
	r.published.Add(bg, int64(n), r.add(o.published, int(s), namespace, KeyScope.String(s.String()))...)
}

// Applied adds n to tiercache.invalidations.applied, by namespace and
// scope, and records delay in tiercache.invalidation.delay, by scope, if it
// is known (not negative): one observation per call, however many
// invalidations the call reports.
func (r *Recorder) Applied(namespace string, s tier.Scope, n int, delay time.Duration) {
	o := r.namespaces.get(namespace)
	r.applied.Add(bg, int64(n), r.add(o.applied, int(s), namespace, KeyScope.String(s.String()))...)
	if delay >= 0 {
		r.delay.Record(bg, delay.Seconds(), r.rec(r.node.delay, int(s), "", KeyScope.String(s.String()))...)
	}
}

// Lease counts one event of the node's bus lease in
// tiercache.lease.events.
func (r *Recorder) Lease(e tier.LeaseEvent) {
	r.lease.Add(bg, 1, r.add(r.node.lease, int(e), "", KeyLeaseEvent.String(e.String()))...)
}

// Dropped counts one drop of the node's L1 in tiercache.l1.drops, by
// reason.
func (r *Recorder) Dropped(reason tier.DropReason) {
	r.drops.Add(bg, 1, r.add(r.node.drops, int(reason), "", KeyDropReason.String(reason.String()))...)
}

// Breaker counts one transition of the node's Redis circuit breaker in
// tiercache.breaker.transitions, by the state it entered.
func (r *Recorder) Breaker(open bool) {
	i := 0
	if open {
		i = 1
	}
	r.breaker.Add(bg, 1, r.node.breaker[i]...)
}

// Replayed adds n to tiercache.invalidations.replayed.
func (r *Recorder) Replayed(n int) {
	r.replayed.Add(bg, int64(n), r.node.base...)
}

// RedisError counts one failed Redis operation in tiercache.redis.errors,
// by namespace (none for the node's own operations), operation and kind.
func (r *Recorder) RedisError(namespace, op string, kind tier.RedisErrorKind) {
	o := r.redisOps.get(redisOp{namespace, op})
	if int(kind) < len(o) {
		r.redisEr.Add(bg, 1, o[kind]...)
		return
	}
	s := r.set(with(nsAttr(namespace), KeyRedisOp.String(op), KeyErrorType.String(kind.String()))...)
	r.redisEr.Add(bg, 1, metric.WithAttributeSet(s))
}

// resOpts are the measurement options of one Resource, by tier.ResourceEvent.
type resOpts struct {
	add [][]metric.AddOption
	rec [][]metric.RecordOption
}

const resourceEvents = int(tier.ResourceFetched) + 1

func (r *Recorder) resOpts(name string) *resOpts {
	o := &resOpts{add: make([][]metric.AddOption, resourceEvents), rec: make([][]metric.RecordOption, resourceEvents)}
	for i := range o.add {
		s := r.set(KeyResource.String(name), KeyResourceEvent.String(tier.ResourceEvent(i).String()))
		o.add[i], o.rec[i] = addOpts(s), recOpts(s)
	}
	return o
}

// Resource counts one event of a Resource in tiercache.resource.events, by
// resource and event, and records a load's duration in
// tiercache.resource.load.duration.
func (r *Recorder) Resource(name string, e tier.ResourceEvent, d time.Duration) {
	o := r.resources.get(name)
	if int(e) >= len(o.add) { // an event a later core adds
		r.resEvents.Add(bg, 1, addOpts(r.set(KeyResource.String(name), KeyResourceEvent.String(e.String())))...)
		return
	}
	r.resEvents.Add(bg, 1, o.add[e]...)
	if e == tier.ResourceLoaded || e == tier.ResourceLoadError {
		r.resDur.Record(bg, d.Seconds(), o.rec[e]...)
	}
}

// rec returns table[i], or, for an enum value past the table, the options
// of namespace and kv built on the spot.
func (r *Recorder) rec(table [][]metric.RecordOption, i int, namespace string, kv attribute.KeyValue) []metric.RecordOption {
	if i < len(table) {
		return table[i]
	}
	return recOpts(r.set(with(nsAttr(namespace), kv)...))
}

// add is rec for counters.
func (r *Recorder) add(table [][]metric.AddOption, i int, namespace string, kv attribute.KeyValue) []metric.AddOption {
	if i < len(table) {
		return table[i]
	}
	return addOpts(r.set(with(nsAttr(namespace), kv)...))
}

// setCache maps a key (a namespace, a Redis operation) to the measurement
// options built for it. Reads are one atomic load and one map lookup, with
// no lock and no allocation; the first use of a key copies the map under a
// lock. It holds one entry per namespace and operation ever seen, as many
// as the node has Caches and the core has operations.
type setCache[K comparable, V any] struct {
	m     atomic.Pointer[map[K]V]
	mu    sync.Mutex
	build func(K) V
}

func (c *setCache[K, V]) get(k K) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.add(k)
}

func (c *setCache[K, V]) add(k K) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	next := make(map[K]V)
	if old != nil {
		next = maps.Clone(*old)
	}
	v := c.build(k)
	next[k] = v
	c.m.Store(&next)
	return v
}

var _ tier.Recorder = (*Recorder)(nil)
