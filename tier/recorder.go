package tier

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/l2"
)

// Recorder receives what a Node and its Caches do, event by event, for
// metrics: set NodeConfig.Recorder to an exporter's adapter (the module
// github.com/tiercache/tiercache/tierotel is one, for OpenTelemetry). Without
// one, nothing is recorded and nothing is measured: an L1 hit does not even
// read the clock.
//
// Methods are called synchronously, on the goroutine of the event (an L1
// hit calls Get on the caller's): they must be safe for concurrent use,
// fast, allocation-free if they can be, and must not call the Node or its
// Caches. A method that panics is recovered; the event is lost and the
// panic logged. Every event of a Cache names its namespace; events of the
// node as a whole (its bus lease, L1 drops, breaker, pending queue) do not
// belong to one.
//
// Embed NopRecorder in an implementation, so that it keeps compiling when
// methods are added.
type Recorder interface {
	// Get reports the answer to one Get, or to one key of a GetMany, and
	// how long the call took.
	Get(namespace string, a Answer, d time.Duration)
	// Fetch reports one call of Config.Fetch (keys 1) or Config.FetchMany
	// (keys the number asked for): how it ended and how long it took.
	Fetch(namespace string, o FetchOutcome, keys int, d time.Duration)
	// Fill reports what became of one fetched value offered to the tiers:
	// FillLanded is counted for L2; FillFenced for an L1 fill refused
	// after L2 took it.
	Fill(namespace string, r FillResult)
	// Wait reports one wait of a load for another claimant's value, how it
	// ended and how long it took. A load may wait several times.
	Wait(namespace string, w WakeSource, d time.Duration)
	// Published reports n invalidations of scope s made by this node (its
	// Invalidate, Set, InvalidateGroup, InvalidateAll, InvalidatePattern,
	// Flush), whether they reached Redis at once or were queued.
	Published(namespace string, s Scope, n int)
	// Applied reports n invalidations of scope s that another node
	// published, applied here, and how long after Redis announced them:
	// the delay of their message from the publishing script to this node's
	// L1, estimated on Redis's clock (within half a round trip), or -1 if
	// this node has not sampled Redis's clock yet.
	Applied(namespace string, s Scope, n int, delay time.Duration)
	// Lease reports the node's bus lease (the right to serve L1, see
	// NodeConfig.LeaseTTL) being renewed or lapsing.
	Lease(e LeaseEvent)
	// Dropped reports the node making its whole L1 unservable, and why.
	Dropped(reason DropReason)
	// Breaker reports the node's Redis circuit breaker opening or closing.
	// It is called on a goroutine of its own, which the Redis operation
	// that moved the breaker waits for.
	Breaker(open bool)
	// Replayed reports n invalidations that had been queued while Redis
	// was unreachable now landed in Redis; Stats.Pending has the depth of
	// the queue.
	Replayed(n int)
	// RedisError reports one failed Redis operation: op names it ("read",
	// "fill", "release", "publish", ...), namespace is that of the key it
	// was for ("" for the node's own operations).
	RedisError(namespace, op string, kind RedisErrorKind)
	// Resource reports an event of the Resource named name: a load from
	// the source (success or load_error, with its duration), a data set
	// taken from Redis (fetched), or a failed Redis operation
	// (redis_error).
	Resource(name string, e ResourceEvent, d time.Duration)
}

// NopRecorder records nothing. Embed it in a Recorder to inherit a no-op
// for methods that you do not implement or that later versions add.
type NopRecorder struct{}

// Get does nothing.
func (NopRecorder) Get(string, Answer, time.Duration) {}

// Fetch does nothing.
func (NopRecorder) Fetch(string, FetchOutcome, int, time.Duration) {}

// Fill does nothing.
func (NopRecorder) Fill(string, FillResult) {}

// Wait does nothing.
func (NopRecorder) Wait(string, WakeSource, time.Duration) {}

// Published does nothing.
func (NopRecorder) Published(string, Scope, int) {}

// Applied does nothing.
func (NopRecorder) Applied(string, Scope, int, time.Duration) {}

// Lease does nothing.
func (NopRecorder) Lease(LeaseEvent) {}

// Dropped does nothing.
func (NopRecorder) Dropped(DropReason) {}

// Breaker does nothing.
func (NopRecorder) Breaker(bool) {}

// Replayed does nothing.
func (NopRecorder) Replayed(int) {}

// RedisError does nothing.
func (NopRecorder) RedisError(string, string, RedisErrorKind) {}

// Resource does nothing.
func (NopRecorder) Resource(string, ResourceEvent, time.Duration) {}

// ResourceEvent is what happened to a Resource, as kiwi-cache reports
// each load.
type ResourceEvent uint8

const (
	// ResourceLoaded: Load succeeded (and the data set was stored, unless
	// a redis_error follows).
	ResourceLoaded ResourceEvent = iota
	// ResourceLoadError: Load failed, panicked or timed out; the last
	// good data set stays.
	ResourceLoadError
	// ResourceRedisError: a Redis operation of the resource failed.
	ResourceRedisError
	// ResourceFetched: a data set another node loaded was taken from
	// Redis.
	ResourceFetched
)

// String returns "success", "load_error", "redis_error" or "fetched".
func (e ResourceEvent) String() string {
	switch e {
	case ResourceLoaded:
		return "success"
	case ResourceLoadError:
		return "load_error"
	case ResourceRedisError:
		return "redis_error"
	}
	return "fetched"
}

// Answer is how a Get was answered. Its String is the name an exporter
// uses as an attribute value.
type Answer uint8

const (
	// AnswerL1 is a fresh value from this node's L1.
	AnswerL1 Answer = iota
	// AnswerL2 is a fresh value from Redis.
	AnswerL2
	// AnswerFetch is an answer of the source, read under a claim: its
	// value (cached unless Fill says otherwise) or its "not found".
	AnswerFetch
	// AnswerUncached is an answer of the source read without a claim (a
	// wait that ran out, Redis unreachable, a key this node's pending
	// write blocks, the Bypass option); nothing was cached.
	AnswerUncached
	// AnswerStale is a permitted-stale value (ReadInfo.Stale), from either
	// tier.
	AnswerStale
	// AnswerNegative is a cached "not found", from either tier.
	AnswerNegative
	// AnswerError is an error without a value: the source failed, ctx
	// ended, the key was invalid, the node was closed.
	AnswerError
)

// String returns "l1", "l2", "fetch", "uncached", "stale", "negative" or
// "error".
func (a Answer) String() string {
	switch a {
	case AnswerL1:
		return "l1"
	case AnswerL2:
		return "l2"
	case AnswerFetch:
		return "fetch"
	case AnswerUncached:
		return "uncached"
	case AnswerStale:
		return "stale"
	case AnswerNegative:
		return "negative"
	}
	return "error"
}

// answerOf classifies a Get's answer.
func answerOf(ri ReadInfo, err error) Answer {
	switch {
	case ri.Negative:
		return AnswerNegative
	case ri.Stale:
		return AnswerStale
	case err != nil && !errors.Is(err, ErrNotFound):
		return AnswerError
	}
	switch ri.Source {
	case SourceL1:
		return AnswerL1
	case SourceL2:
		return AnswerL2
	case SourceFetch:
		return AnswerFetch
	case SourceUncached:
		return AnswerUncached
	}
	return AnswerError
}

// FetchOutcome is how one call of the source ended.
type FetchOutcome uint8

const (
	// FetchSuccess: the source returned a value (for FetchMany, a map
	// without an error).
	FetchSuccess FetchOutcome = iota
	// FetchNotFound: the source said the object does not exist.
	FetchNotFound
	// FetchError: the source failed (kiwi-cache's load_error).
	FetchError
	// FetchPanic: the source panicked; the panic was recovered.
	FetchPanic
	// FetchTimeout: the call outlived its deadline (the caller's, or
	// Config.FetchTimeout).
	FetchTimeout
	// FetchCanceled: every caller gave up, or the node closed.
	FetchCanceled
)

// String returns "success", "not_found", "load_error", "panic", "timeout"
// or "canceled".
func (o FetchOutcome) String() string {
	switch o {
	case FetchSuccess:
		return "success"
	case FetchNotFound:
		return "not_found"
	case FetchError:
		return "load_error"
	case FetchPanic:
		return "panic"
	case FetchTimeout:
		return "timeout"
	}
	return "canceled"
}

// fetchOutcome classifies what a call of the source returned.
func fetchOutcome(err error) FetchOutcome {
	switch {
	case err == nil:
		return FetchSuccess
	case errors.Is(err, ErrNotFound):
		return FetchNotFound
	case errors.Is(err, ErrFetchPanic):
		return FetchPanic
	case errors.Is(err, context.DeadlineExceeded):
		return FetchTimeout
	case errors.Is(err, context.Canceled):
		return FetchCanceled
	}
	return FetchError
}

// FillResult is what became of a fetched value (or "not found") offered to
// the tiers.
type FillResult uint8

const (
	// FillLanded: Redis took it under this node's claim.
	FillLanded FillResult = iota
	// FillRefused: Redis refused it: the claim was invalidated, expired or
	// taken over, or one of its groups was invalidated, since the fetch
	// began (docs/RACES.md R01, R03, R04, R05, R31).
	FillRefused
	// FillFenced: L1 refused it: this node learnt of an invalidation of
	// the key or of a group since the load began (R12, R13).
	FillFenced
	// FillUncacheable: its groups broke the rules, or Groups or the Codec
	// failed or panicked.
	FillUncacheable
	// FillOversize: its stored form was over NodeConfig.MaxValueBytes.
	FillOversize
	// FillFailed: Redis could not be asked.
	FillFailed
)

// String returns "landed", "refused", "fenced", "uncacheable", "oversize"
// or "redis_error".
func (r FillResult) String() string {
	switch r {
	case FillLanded:
		return "landed"
	case FillRefused:
		return "refused"
	case FillFenced:
		return "fenced"
	case FillUncacheable:
		return "uncacheable"
	case FillOversize:
		return "oversize"
	}
	return "redis_error"
}

// WakeSource is how a wait for another claimant's value ended.
type WakeSource uint8

const (
	// WakeMessage: a message said the claimant finished or the key was
	// invalidated.
	WakeMessage WakeSource = iota
	// WakePoll: the poll interval passed (a message may have been lost, or
	// the claimant is still fetching).
	WakePoll
	// WakeGaveUp: the wait outlasted NodeConfig.FlagTTL; the load fetched
	// without caching.
	WakeGaveUp
	// WakeCanceled: the caller's ctx ended.
	WakeCanceled
)

// String returns "message", "poll", "gave_up" or "canceled".
func (w WakeSource) String() string {
	switch w {
	case WakeMessage:
		return "message"
	case WakePoll:
		return "poll"
	case WakeGaveUp:
		return "gave_up"
	}
	return "canceled"
}

// Scope is what an invalidation names.
type Scope uint8

const (
	// ScopeKeys: keys, deleted or written (Invalidate, Set,
	// InvalidatePattern).
	ScopeKeys Scope = iota
	// ScopeGroups: groups of Config.Groups (InvalidateGroup); such an
	// invalidation belongs to no namespace.
	ScopeGroups
	// ScopeNamespace: a whole namespace (InvalidateAll).
	ScopeNamespace
	// ScopeFleet: every L1 of the fleet (Flush); it belongs to no
	// namespace.
	ScopeFleet
)

// String returns "keys", "groups", "namespace" or "fleet".
func (s Scope) String() string {
	switch s {
	case ScopeKeys:
		return "keys"
	case ScopeGroups:
		return "groups"
	case ScopeNamespace:
		return "namespace"
	}
	return "fleet"
}

// LeaseEvent is a change of the node's bus lease.
type LeaseEvent uint8

const (
	// LeaseRenewed: a ping came back; L1 may serve for another LeaseTTL.
	LeaseRenewed LeaseEvent = iota
	// LeaseLapsed: no ping came back within LeaseTTL; L1 stops serving
	// until one does.
	LeaseLapsed
)

// String returns "renewed" or "lapsed".
func (e LeaseEvent) String() string {
	if e == LeaseRenewed {
		return "renewed"
	}
	return "lapsed"
}

// DropReason is why a node made its whole L1 unservable.
type DropReason uint8

const (
	// DropGap: a bus message was lost (a gap in the sequence numbers).
	DropGap DropReason = iota
	// DropDisconnect: the bus subscription broke.
	DropDisconnect
	// DropLapse: the lease lapsed.
	DropLapse
	// DropEpoch: the fleet's epoch in Redis changed (Redis lost its data,
	// or was replaced).
	DropEpoch
	// DropFlush: a fleet flush (Node.Flush) was applied.
	DropFlush
	// DropOther: any other cause.
	DropOther
)

// String returns "gap", "disconnect", "lapse", "epoch", "flush" or
// "other".
func (r DropReason) String() string {
	switch r {
	case DropGap:
		return "gap"
	case DropDisconnect:
		return "disconnect"
	case DropLapse:
		return "lapse"
	case DropEpoch:
		return "epoch"
	case DropFlush:
		return "flush"
	}
	return "other"
}

// dropReason names a subscriber's reason to drop L1.
func dropReason(r bus.Reason) DropReason {
	switch r {
	case bus.Gap:
		return DropGap
	case bus.Disconnected:
		return DropDisconnect
	case bus.LeaseLapsed:
		return DropLapse
	case bus.EpochChanged:
		return DropEpoch
	case bus.Flushed:
		return DropFlush
	}
	return DropOther
}

// RedisErrorKind is what kind of failure a Redis operation met.
type RedisErrorKind uint8

const (
	// RedisTimeout: the operation outlived NodeConfig.RedisTimeout or its
	// caller's deadline.
	RedisTimeout RedisErrorKind = iota
	// RedisUnavailable: the breaker was open, or no connection could be
	// made.
	RedisUnavailable
	// RedisServerError: Redis answered with an error (OOM, READONLY, a
	// script error, ...).
	RedisServerError
	// RedisOtherError: anything else (a connection reset, a protocol
	// error).
	RedisOtherError
)

// String returns "timeout", "unavailable", "server" or "other".
func (k RedisErrorKind) String() string {
	switch k {
	case RedisTimeout:
		return "timeout"
	case RedisUnavailable:
		return "unavailable"
	case RedisServerError:
		return "server"
	}
	return "other"
}

// redisErrorKind classifies a failed Redis operation's error.
func redisErrorKind(err error) RedisErrorKind {
	var (
		re interface{ RedisError() }
		oe *net.OpError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return RedisTimeout
	case errors.Is(err, l2.ErrUnavailable), errors.As(err, &oe) && oe.Op == "dial":
		return RedisUnavailable
	case errors.As(err, &re):
		return RedisServerError
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return RedisTimeout
	}
	return RedisOtherError
}
