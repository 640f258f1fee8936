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
	// KeyResource names a Resource (tier.ResourceConfig.Name).
	KeyResource = attribute.Key("tiercache.resource")
	// KeyResourceEvent is what happened to a Resource:
	// tier.ResourceEvent's String ("success", "load_error",
	// "redis_error", "fetched").
	KeyResourceEvent = attribute.Key("tiercache.resource.event")
)

// Names of the instruments recorded event by event, in OpenTelemetry's
// style. Every measurement also carries the attributes of WithAttributes.
const (
	// MetricGetDuration is a histogram in seconds of Gets (one per Get,
	// one per key of a GetMany), by namespace and answer: its count is
	// the number of answers by tier.
	MetricGetDuration = "tiercache.get.duration"
	// MetricFetchDuration is a histogram in seconds of calls of the
	// source (Fetch or FetchMany), by namespace and outcome.
	MetricFetchDuration = "tiercache.fetch.duration"
	// MetricFetchKeys counts the keys ({key}) those calls asked for, by
	// namespace and outcome.
	MetricFetchKeys = "tiercache.fetch.keys"
	// MetricFills counts fetched values (or not-founds) offered to the
	// tiers ({fill}), by namespace and result.
	MetricFills = "tiercache.fills"
	// MetricWaitDuration is a histogram in seconds of waits for another
	// claimant's value, by namespace and how they ended.
	MetricWaitDuration = "tiercache.wait.duration"
	// MetricInvalidationsPublished counts invalidations this node made
	// ({invalidation}), by namespace (if any) and scope.
	MetricInvalidationsPublished = "tiercache.invalidations.published"
	// MetricInvalidationsApplied counts invalidations other nodes
	// published that this node applied ({invalidation}), by namespace (if
	// any) and scope.
	MetricInvalidationsApplied = "tiercache.invalidations.applied"
	// MetricInvalidationDelay is a histogram in seconds of the delay from
	// Redis announcing an invalidation to this node applying it, by
	// scope: one observation per part of a message whose delay is known.
	MetricInvalidationDelay = "tiercache.invalidation.delay"
	// MetricInvalidationsReplayed counts invalidations queued while Redis
	// was unreachable that landed in Redis on replay ({invalidation}).
	MetricInvalidationsReplayed = "tiercache.invalidations.replayed"
	// MetricLeaseEvents counts renewals and lapses of the node's bus
	// lease ({event}), by event.
	MetricLeaseEvents = "tiercache.lease.events"
	// MetricL1Drops counts the times the node made its whole L1
	// unservable ({drop}), by reason.
	MetricL1Drops = "tiercache.l1.drops"
	// MetricBreakerTransitions counts transitions of the node's Redis
	// circuit breaker ({transition}), by the state entered.
	MetricBreakerTransitions = "tiercache.breaker.transitions"
	// MetricRedisErrors counts failed Redis operations ({error}), by
	// namespace (if any), operation and error.type.
	MetricRedisErrors = "tiercache.redis.errors"
	// MetricResourceEvents counts the events ({event}) of a Resource, by
	// tiercache.resource and tiercache.resource.event.
	MetricResourceEvents = "tiercache.resource.events"
	// MetricResourceLoadDuration is a histogram in seconds of a
	// Resource's loads from the source, by tiercache.resource and
	// tiercache.resource.event (success or load_error).
	MetricResourceLoadDuration = "tiercache.resource.load.duration"
)

// Names of the observable instruments, read from Node.Stats and
// Node.CacheStats at each collection once Recorder.Observe is called.
// Gauges of additive quantities are up-down counters, as OpenTelemetry's
// conventions ask (Prometheus shows them as gauges).
const (
	// MetricInvalidationPending is an up-down counter of the
	// invalidations not yet in Redis ({invalidation}): queued while it
	// was unreachable, or being replayed.
	MetricInvalidationPending = "tiercache.invalidation.pending"
	// MetricInvalidationOverflows counts queued invalidations that did
	// not fit the queue and were escalated to their whole namespace
	// ({invalidation}).
	MetricInvalidationOverflows = "tiercache.invalidation.overflows"
	// MetricL1Usage is an up-down counter of the cost L1 holds, in bytes.
	MetricL1Usage = "tiercache.l1.usage"
	// MetricL1Limit is an up-down counter of L1's bound, in bytes
	// (NodeConfig.L1MaxBytes).
	MetricL1Limit = "tiercache.l1.limit"
	// MetricL1Evictions counts entries L1 evicted to make room, or
	// expired ({entry}).
	MetricL1Evictions = "tiercache.l1.evictions"
	// MetricBreakerOpen is an up-down counter of open breakers
	// ({breaker}): 1 while the node's breaker is open or lets a probe
	// through, 0 while it is closed.
	MetricBreakerOpen = "tiercache.breaker.open"
	// MetricRefreshes counts background refreshes started
	// (stale-while-revalidate, early refresh) ({refresh}), by namespace.
	MetricRefreshes = "tiercache.refreshes"
	// MetricFailSafeFetches counts fetches that failed or timed out and
	// were answered with a kept stale value instead ({fetch}), by
	// namespace.
	MetricFailSafeFetches = "tiercache.fail_safe.fetches"
	// MetricOutageAnswers counts Gets answered from L1 in the degraded
	// mode of NodeConfig.OutageMaxAge ({answer}), by namespace; they are
	// also answers "stale" of MetricGetDuration.
	MetricOutageAnswers = "tiercache.outage.answers"
	// MetricL2Rejects counts values Redis held that were not served
	// ({value}), by namespace and reason.
	MetricL2Rejects = "tiercache.l2.rejects"
	// MetricRecorderPanics counts calls of the node's Recorder or Tracer
	// that panicked ({panic}); their events are lost.
	MetricRecorderPanics = "tiercache.recorder.panics"
)

// Span names of the Tracer.
const (
	// SpanGet is the span of a Get or GetMany that L1 did not answer.
	SpanGet = "tiercache.get"
	// SpanFetch is the span of one call of Fetch or FetchMany.
	SpanFetch = "tiercache.fetch"
)
