// Package tierotel adapts tiercache's metrics and traces to OpenTelemetry.
// It lives in a module of its own, so that the core does not depend on
// OpenTelemetry.
//
// # Metrics
//
// A [Recorder] is a tier.Recorder: set it as tier.NodeConfig.Recorder, and
// the node reports each event to it as it happens: every Get's answer and
// latency, every call of the source, every fill, every wait for another
// claimant, every invalidation published and applied (with its delay from
// Redis's announcement), and the node's lease, L1 drops, breaker
// transitions, replays and Redis errors. [Recorder.Observe] adds what is
// better read than counted, at each collection: the pending invalidations,
// L1's bytes and evictions, the breaker's state, and a few per-namespace
// counters of the node's Stats. Instruments are named, united and
// attributed by OpenTelemetry's conventions (names under "tiercache.",
// durations in seconds, bytes in "By", counts in annotations such as
// "{fill}"); the attribute values are the Strings of the core's enums.
// Attributes of [WithAttributes] go on every measurement.
//
// # Cost
//
// Recording an event is one lookup of its namespace in a copy-on-write map
// (an atomic load, no lock) and one measurement with an attribute set built
// when the namespace was first seen, for every value of the event's enum:
// after that first event it allocates nothing in this package (the SDK's
// own aggregation of a known series does not allocate either; see the
// benchmarks). The core reads the clock for an L1 hit only when a Recorder
// is set.
//
// # Traces
//
// A [Tracer] is a tier.Tracer: set it as tier.NodeConfig.Tracer. A Get
// that L1 did not answer has a span "tiercache.get"; each call of the
// source a span "tiercache.fetch", the child of the Get that began the
// load, linked to the span of every other Get on the node that waited for
// it. A fresh L1 hit has no span: it costs a few hundred nanoseconds, a
// span many times that.
//
// # Guarantee
//
// The Recorder and the Tracer never call back into a node: they only
// measure, and their methods are safe for concurrent use. Observe's
// callback reads Node.Stats and Node.CacheStats, on the exporter's
// goroutine at collection, never during an event. A panic in an exporter
// (an instrument or span implementation that panics) is recovered by the
// core and counted in Stats.RecorderPanics; the Get goes on.
package tierotel
