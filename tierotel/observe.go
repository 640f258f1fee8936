package tierotel

import (
	"context"
	"errors"
	"math"

	"go.opentelemetry.io/otel/metric"

	"github.com/tiercache/tiercache/tier"
)

// Observe registers a callback that reads n.Stats and n.CacheStats at each
// collection into the Recorder's observable instruments: the pending
// invalidations, L1's usage, limit and evictions, the breaker's state, the
// queue's overflows, the Recorder's own panics, and per namespace the
// background refreshes, fail-safe fetches, degraded-mode answers and values
// Redis held that were not served.
//
// Observe one node per Recorder, the node whose NodeConfig.Recorder it is:
// a second node observed through the same Recorder would report under the
// same attributes. Unregister the returned Registration before closing the
// node; until then the callback runs on the exporter's goroutine, at its
// pace, and never during an event of the node.
func (r *Recorder) Observe(n *tier.Node) (metric.Registration, error) {
	if n == nil {
		return nil, errors.New("tierotel: Observe of a nil Node")
	}
	return r.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r.observe(o, n)
		return nil
	},
		r.pending, r.l1Usage, r.l1Limit, r.breakerOpen,
		r.overflows, r.l1Evictions, r.refreshes, r.failSafe, r.outage,
		r.rejects, r.recorderPanics,
	)
}

func (r *Recorder) observe(o metric.Observer, n *tier.Node) {
	st := n.Stats()
	node := r.node.obs
	o.ObserveInt64(r.pending, clamp(st.Pending), node...)
	o.ObserveInt64(r.overflows, clamp(st.PendingOverflow), node...)
	o.ObserveInt64(r.l1Usage, clamp(st.L1Bytes), node...)
	o.ObserveInt64(r.l1Limit, clamp(st.L1MaxBytes), node...)
	o.ObserveInt64(r.l1Evictions, clamp(st.L1Evictions), node...)
	open := int64(0)
	if st.BreakerOpen {
		open = 1
	}
	o.ObserveInt64(r.breakerOpen, open, node...)
	o.ObserveInt64(r.recorderPanics, clamp(st.RecorderPanics), node...)
	for name, cs := range n.CacheStats() {
		ns := r.namespaces.get(name)
		o.ObserveInt64(r.refreshes, clamp(cs.Refreshes), ns.obs...)
		o.ObserveInt64(r.failSafe, clamp(cs.FailSafe), ns.obs...)
		o.ObserveInt64(r.outage, clamp(cs.OutageServed), ns.obs...)
		o.ObserveInt64(r.rejects, clamp(cs.GroupStale), ns.rejects[0]...)
		o.ObserveInt64(r.rejects, clamp(cs.Corrupt), ns.rejects[1]...)
	}
}

// clamp converts a counter to the instruments' int64.
func clamp(v uint64) int64 {
	return int64(min(v, math.MaxInt64))
}
