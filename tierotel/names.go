package tierotel

import "go.opentelemetry.io/otel/attribute"

// Attribute keys. Each value is the String of the core's enum (tier.Answer,
// tier.FetchOutcome, ...), so that the values a dashboard filters on are
// documented once, in package tier.
const (
	// KeyNamespace is the Cache's namespace (tier.Config.Namespace). It is
	// absent from the measurements of an event that belongs to no
	// namespace: a group or fleet invalidation, a node's own Redis
	// operation.
	KeyNamespace = attribute.Key("tiercache.namespace")
	// KeyAnswer is how a Get was answered: tier.Answer's String ("l1",
	// "l2", "fetch", "uncached", "stale", "negative", "error").
	KeyAnswer = attribute.Key("tiercache.answer")
	// KeyFetchOutcome is how a call of the source ended: tier.FetchOutcome's
	// String ("success", "not_found", "load_error", "panic", "timeout",
	// "canceled").
	KeyFetchOutcome = attribute.Key("tiercache.fetch.outcome")
	// KeyFillResult is what became of a fetched value offered to the
	// tiers: tier.FillResult's String ("landed", "refused", "fenced",
	// "uncacheable", "oversize", "redis_error").
	KeyFillResult = attribute.Key("tiercache.fill.result")
	// KeyWake is how a wait for another claimant's value ended:
	// tier.WakeSource's String ("message", "poll", "gave_up", "canceled").
	KeyWake = attribute.Key("tiercache.wake")
	// KeyScope is what an invalidation names: tier.Scope's String ("keys",
	// "groups", "namespace", "fleet").
	KeyScope = attribute.Key("tiercache.scope")
	// KeyLeaseEvent is a change of the node's bus lease: tier.LeaseEvent's
	// String ("renewed", "lapsed").
	KeyLeaseEvent = attribute.Key("tiercache.lease.event")
	// KeyDropReason is why the node made its whole L1 unservable:
	// tier.DropReason's String ("gap", "disconnect", "lapse", "epoch",
	// "flush", "other").
	KeyDropReason = attribute.Key("tiercache.drop.reason")
	// KeyBreakerState is the state the node's Redis circuit breaker
	// entered: "open" or "closed".
	KeyBreakerState = attribute.Key("tiercache.breaker.state")
	// KeyRedisOp names the failed Redis operation, as the core does
	// ("read", "fill", "release", "publish", ...).
	KeyRedisOp = attribute.Key("tiercache.redis.op")
	// KeyErrorType is OpenTelemetry's general error.type: on a Redis error,
	// tier.RedisErrorKind's String ("timeout", "unavailable", "server",
	// "other"); on a span that ended in error, a class of the error (see
	// Tracer).
	KeyErrorType = attribute.Key("error.type")
	// KeyRejectReason is why a value Redis held was not served:
	// "group_stale" (a group of it was invalidated since it was filled) or
	// "corrupt" (it did not decode).
	KeyRejectReason = attribute.Key("tiercache.reject.reason")
	// KeyKeyCount is the number of keys a span's call asked for: 1 for a
	// Get or a Fetch, the batch's size for a GetMany or a FetchMany.
	KeyKeyCount = attribute.Key("tiercache.key.count")
)

// Names of the instruments recorded event by event, in OpenTelemetry's
// style; the README's table gives each one's kind, unit, attributes and
// Prometheus name.
const (
	// MetricGetDuration is a histogram, s: one Get (or key of a GetMany) and how it was answered.
	MetricGetDuration = "tiercache.get.duration"
	// MetricFetchDuration is a histogram, s: one call of Fetch or FetchMany, by outcome.
	MetricFetchDuration = "tiercache.fetch.duration"
	// MetricFetchKeys is a counter, {key}: the keys those calls asked for, by outcome.
	MetricFetchKeys = "tiercache.fetch.keys"
	// MetricFills is a counter, {fill}: fetched values offered to the tiers, by result.
	MetricFills = "tiercache.fills"
	// MetricWaitDuration is a histogram, s: one wait for another claimant's value, by how it ended.
	MetricWaitDuration = "tiercache.wait.duration"
	// MetricInvalidationsPublished is a counter, {invalidation}: invalidations this node made, by scope.
	MetricInvalidationsPublished = "tiercache.invalidations.published"
	// MetricInvalidationsApplied is a counter, {invalidation}: other nodes' invalidations applied here, by scope.
	MetricInvalidationsApplied = "tiercache.invalidations.applied"
	// MetricInvalidationDelay is a histogram, s: publish-to-apply delay of one applied message part, by scope.
	MetricInvalidationDelay = "tiercache.invalidation.delay"
	// MetricInvalidationsReplayed is a counter, {invalidation}: queued invalidations that reached Redis on replay.
	MetricInvalidationsReplayed = "tiercache.invalidations.replayed"
	// MetricLeaseEvents is a counter, {event}: renewals and lapses of the node's bus lease.
	MetricLeaseEvents = "tiercache.lease.events"
	// MetricL1Drops is a counter, {drop}: times the node made its whole L1 unservable, by reason.
	MetricL1Drops = "tiercache.l1.drops"
	// MetricBreakerTransitions is a counter, {transition}: the breaker entering a state.
	MetricBreakerTransitions = "tiercache.breaker.transitions"
	// MetricRedisErrors is a counter, {error}: failed Redis operations, by operation and kind.
	MetricRedisErrors = "tiercache.redis.errors"
)

// Names of the observable instruments, read from Node.Stats and
// Node.CacheStats at each collection once Recorder.Observe is called.
const (
	// MetricInvalidationPending is an observable up-down counter, {invalidation}: invalidations not yet in Redis.
	MetricInvalidationPending = "tiercache.invalidation.pending"
	// MetricInvalidationOverflows is an observable counter, {invalidation}: queued invalidations escalated to their namespace.
	MetricInvalidationOverflows = "tiercache.invalidation.overflows"
	// MetricL1Usage is an observable up-down counter, By: the cost L1 holds.
	MetricL1Usage = "tiercache.l1.usage"
	// MetricL1Limit is an observable up-down counter, By: L1's bound (NodeConfig.L1MaxBytes).
	MetricL1Limit = "tiercache.l1.limit"
	// MetricL1Evictions is an observable counter, {entry}: entries L1 evicted or expired.
	MetricL1Evictions = "tiercache.l1.evictions"
	// MetricBreakerOpen is an observable up-down counter, {breaker}: 1 while the breaker is open or probing, else 0.
	MetricBreakerOpen = "tiercache.breaker.open"
	// MetricRefreshes is an observable counter, {refresh}: background refreshes started, by namespace.
	MetricRefreshes = "tiercache.refreshes"
	// MetricFailSafeFetches is an observable counter, {fetch}: failed fetches answered with a kept stale value.
	MetricFailSafeFetches = "tiercache.fail_safe.fetches"
	// MetricOutageAnswers is an observable counter, {answer}: Gets answered from L1 in the degraded mode.
	MetricOutageAnswers = "tiercache.outage.answers"
	// MetricL2Rejects is an observable counter, {value}: values Redis held that were not served, by reason.
	MetricL2Rejects = "tiercache.l2.rejects"
	// MetricRecorderPanics is an observable counter, {panic}: calls of the node's Recorder that panicked.
	MetricRecorderPanics = "tiercache.recorder.panics"
)

// Span names of the Tracer.
const (
	// SpanGet is the span of a Get or GetMany that L1 did not answer.
	SpanGet = "tiercache.get"
	// SpanFetch is the span of one call of Fetch or FetchMany.
	SpanFetch = "tiercache.fetch"
)
