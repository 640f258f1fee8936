package tier_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// The bus benchmarks compare tiercache's invalidation bus with bare Redis
// pub/sub on the same private Redis in the same run: a PUBLISH of a payload
// of the same size to as many bare go-redis subscribers. Like every
// benchmark of this package, they claim ratios, never absolute numbers.

const (
	// busBenchNamespace is the namespace of every Cache of the bus
	// benchmarks.
	busBenchNamespace = "bench-bus"
	// busBenchGuard bounds each wait for deliveries, so that a lost message
	// fails the benchmark instead of hanging it. It is no timed assertion:
	// a delivery takes microseconds unless something is broken.
	busBenchGuard = 30 * time.Second
	// propReceivers is the number of receiving nodes, and of bare
	// subscribers, of BenchmarkPropagation.
	propReceivers = 8
	// invWorkers is the number of goroutines invalidating at once in
	// BenchmarkInvalidationThroughput, whatever GOMAXPROCS is.
	invWorkers = 64
	// invReceivers is the number of receiving nodes, and of bare
	// subscribers, of BenchmarkInvalidationThroughput.
	invReceivers = 2
)

// busBenchNode starts a Node over its own client of srv whose bus
// subscriber calls applied after each message it handled; the node is
// closed at cleanup (before its client, which registered its cleanup first).
func busBenchNode(tb testing.TB, srv *redistest.Server, applied func(*bus.Message)) *tier.Node {
	tb.Helper()
	hk := &hooks.Points{Bus: &bus.Hooks{Applied: applied}}
	n, err := tier.NewNodeWithHooks(context.Background(), srv.Client(tb), tier.NodeConfig{}, hk)
	if err != nil {
		tb.Fatalf("NewNode: %v", err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	return n
}

// busBenchPayload is a bus message announcing key: byte for byte what a
// node publishes for an Invalidate of that one key (with seq in place of
// the number Redis draws), and so the bare baseline's payload.
func busBenchPayload(tb testing.TB, key string, seq uint64) string {
	tb.Helper()
	m := bus.Message{
		Kind:   bus.KindKeys,
		Seq:    seq,
		Groups: []bus.Group{{Namespace: busBenchNamespace, Keys: []string{key}}},
	}
	b, err := m.Encode()
	if err != nil {
		tb.Fatalf("encode: %v", err)
	}
	return string(b)
}

// rawSubscribers subscribes n bare go-redis PubSubs to channel, each on a
// client of its own, and returns once every subscription is confirmed. Each
// has a goroutine that calls deliver for every message, with the time it
// was received. The goroutines stop at cleanup, before the clients close.
func rawSubscribers(tb testing.TB, srv *redistest.Server, channel string, n int, deliver func(r int, payload string, at time.Time)) {
	tb.Helper()
	opens := make([]func(context.Context) *redis.PubSub, n)
	for r := range opens {
		rdb := srv.Client(tb)
		opens[r] = func(ctx context.Context) *redis.PubSub { return rdb.Subscribe(ctx, channel) }
	}
	subscribers(tb, "subscribe", channel, opens, deliver)
}

// subscribers opens a PubSub with each of opens, each confirmed by a
// subscription message of kind on channel, and runs a goroutine per PubSub
// that calls deliver for every message, with the time it was received. The
// goroutines stop at cleanup, before the clients behind opens close (the
// caller made them first).
func subscribers(tb testing.TB, kind, channel string, opens []func(context.Context) *redis.PubSub, deliver func(r int, payload string, at time.Time)) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg   sync.WaitGroup
		subs []*redis.PubSub
	)
	tb.Cleanup(func() {
		cancel()
		for _, ps := range subs {
			_ = ps.Close() // unblocks its Receive
		}
		wg.Wait()
	})
	for r, open := range opens {
		ps := open(ctx)
		subs = append(subs, ps)
		msg, err := ps.Receive(ctx)
		if err != nil {
			tb.Fatalf("raw subscriber %d: %s: %v", r, kind, err)
		}
		if s, ok := msg.(*redis.Subscription); !ok || s.Kind != kind || s.Channel != channel {
			tb.Fatalf("raw subscriber %d: got %v, want the subscription's confirmation", r, msg)
		}
		wg.Go(func() {
			for {
				msg, err := ps.Receive(ctx)
				at := time.Now()
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					tb.Errorf("raw subscriber %d: %v", r, err)
					return
				}
				if m, ok := msg.(*redis.Message); ok {
					deliver(r, m.Payload, at)
				}
			}
		})
	}
}

// delivery is one receiver's receipt of one message: which receiver, what
// it received (the key for a node, the payload for a bare subscriber), and
// when.
type delivery struct {
	receiver int
	id       string
	at       time.Time
}

// BenchmarkPropagation measures how long after an invalidation returns on
// one node each of 8 other nodes has applied it, against a bare PUBLISH of
// a payload of the same size to 8 bare subscribers. Each iteration sends one
// message and waits for all 8 receipts: this is latency, not throughput.
// A delay counts from the return of Invalidate (or Publish) to the receiver's
// time of receipt, and is 0 if the receipt came first. p50-µs, p99-µs and
// max-µs are over every receiver's every delivery; ns/op is a whole round.
// "interleaved" alternates a round of each in one loop, for their ratio on a
// shared machine.
func BenchmarkPropagation(b *testing.B) {
	srv := redistest.Start(b)
	rig := newPropagationRig(b, benchNode(b, srv), func(applied func(*bus.Message)) *tier.Node {
		return busBenchNode(b, srv, applied)
	})
	const rawChannel = "bench:raw-propagation"
	rawSubscribers(b, srv, rawChannel, propReceivers, rig.receive)
	rawPub := srv.Client(b)
	rig.run(b, "raw-publish", func(payload string) error {
		n, err := rawPub.Publish(rig.ctx, rawChannel, payload).Result()
		if err == nil && n != propReceivers {
			err = fmt.Errorf("PUBLISH reached %d subscribers, want %d", n, propReceivers)
		}
		return err
	})
}

// propagationRig is what the propagation benchmarks share: a publishing
// node and its cache, the receipts of propReceivers receiving nodes and of
// as many bare subscribers, and fresh keys.
type propagationRig struct {
	ctx               context.Context
	pub               *tier.Node
	c                 *tier.Cache[string, string]
	quit              chan struct{} // closed at cleanup: unblocks the receivers
	applied, received chan delivery
	next              int
}

// newPropagationRig makes a rig publishing on pub, and propReceivers
// receiving nodes through receiver, which starts a node whose bus calls
// applied for every message it handles. The caller subscribes the bare
// subscribers with rig.receive, then calls run.
func newPropagationRig(b *testing.B, pub *tier.Node, receiver func(applied func(*bus.Message)) *tier.Node) *propagationRig {
	rig := &propagationRig{
		ctx:      context.Background(),
		pub:      pub,
		c:        benchCache[string](b, pub, busBenchNamespace, benchTTL),
		quit:     make(chan struct{}),
		applied:  make(chan delivery, 4*propReceivers),
		received: make(chan delivery, 4*propReceivers),
	}
	for r := range propReceivers {
		n := receiver(func(m *bus.Message) {
			at := time.Now()
			for _, g := range m.Groups {
				if g.Namespace != busBenchNamespace {
					continue
				}
				for _, k := range g.Keys {
					select {
					case rig.applied <- delivery{receiver: r, id: k, at: at}:
					case <-rig.quit:
						return
					}
				}
			}
		})
		benchCache[string](b, n, busBenchNamespace, benchTTL)
	}
	return rig
}

// receive records bare subscriber r's receipt of payload at at.
func (rig *propagationRig) receive(r int, payload string, at time.Time) {
	select {
	case rig.received <- delivery{receiver: r, id: payload, at: at}:
	case <-rig.quit:
	}
}

// freshKeys returns n keys distinct across every run, of fixed width so
// that every message, and every bare payload, has the same size.
func (rig *propagationRig) freshKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("prop:%010d", rig.next)
		rig.next++
	}
	return keys
}

// run warms both paths with an untimed round each, so that every connection
// is dialled and every subscription carries messages, then runs the
// sub-benchmarks "tiercache" (Invalidate), raw (rawSend of a payload as
// large as the node's message) and "interleaved" (a round of each per
// iteration, reporting tiercache-p50-µs, tiercache-p99-µs, raw-p50-µs,
// raw-p99-µs and their p99-ratio, free of the drift of a shared machine's
// load between two runs).
func (rig *propagationRig) run(b *testing.B, raw string, rawSend func(payload string) error) {
	// Registered last, so it runs first: no receiver stays blocked on a
	// send while its node or subscriber is being closed.
	b.Cleanup(func() { close(rig.quit) })
	guard := time.NewTimer(busBenchGuard)
	defer guard.Stop()
	warmKey := rig.freshKeys(1)[0]
	if err := rig.c.Invalidate(rig.ctx, warmKey); err != nil {
		b.Fatal(err)
	}
	awaitRound(b, 0, warmKey, time.Now(), rig.applied, guard, nil)
	warmPayload := busBenchPayload(b, rig.freshKeys(1)[0], 1)
	if err := rawSend(warmPayload); err != nil {
		b.Fatal(err)
	}
	awaitRound(b, 0, warmPayload, time.Now(), rig.received, guard, nil)
	payloads := func(n int) []string {
		out := make([]string, n)
		for i, k := range rig.freshKeys(n) {
			out[i] = busBenchPayload(b, k, uint64(i+1))
		}
		return out
	}
	published := func(b *testing.B, before tier.Stats) {
		if d := rig.pub.Stats().Published - before.Published; d != uint64(b.N) {
			b.Fatalf("%d Invalidates published %d messages, want one each", b.N, d)
		}
	}

	b.Run("tiercache", func(b *testing.B) {
		keys := rig.freshKeys(b.N)
		before := rig.pub.Stats()
		rig.measure(b, keys, rig.applied, func(i int) error { return rig.c.Invalidate(rig.ctx, keys[i]) })
		published(b, before)
	})
	b.Run(raw, func(b *testing.B) {
		ps := payloads(b.N)
		rig.measure(b, ps, rig.received, func(i int) error { return rawSend(ps[i]) })
	})
	b.Run("interleaved", func(b *testing.B) {
		keys, ps := rig.freshKeys(b.N), payloads(b.N)
		var delays [2][]time.Duration
		before := rig.pub.Stats()
		guard := time.NewTimer(busBenchGuard)
		defer guard.Stop()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := rig.c.Invalidate(rig.ctx, keys[i]); err != nil {
				b.Fatal(err)
			}
			delays[0] = awaitRound(b, i, keys[i], time.Now(), rig.applied, guard, delays[0])
			if err := rawSend(ps[i]); err != nil {
				b.Fatal(err)
			}
			delays[1] = awaitRound(b, i, ps[i], time.Now(), rig.received, guard, delays[1])
		}
		b.StopTimer()
		published(b, before)
		var p99 [2]float64
		for j, name := range []string{"tiercache", "raw"} {
			slices.Sort(delays[j])
			b.ReportMetric(nearestRank(delays[j], 0.50), name+"-p50-µs")
			p99[j] = nearestRank(delays[j], 0.99)
			b.ReportMetric(p99[j], name+"-p99-µs")
		}
		if p99[1] > 0 {
			b.ReportMetric(p99[0]/p99[1], "p99-ratio")
		}
	})
}

// measure runs b.N rounds of send(i), each waiting for deliveries of ids[i]
// to every receiver, and reports the delays' percentiles.
func (rig *propagationRig) measure(b *testing.B, ids []string, deliveries <-chan delivery, send func(i int) error) {
	delays := make([]time.Duration, 0, b.N*propReceivers)
	guard := time.NewTimer(busBenchGuard)
	defer guard.Stop()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := send(i); err != nil {
			b.Fatal(err)
		}
		delays = awaitRound(b, i, ids[i], time.Now(), deliveries, guard, delays)
	}
	b.StopTimer()
	reportLatency(b, delays)
}

// reportLatency reports the median, 99th percentile (nearest rank) and
// maximum of delays, in microseconds.
func reportLatency(b *testing.B, delays []time.Duration) {
	if len(delays) == 0 {
		return
	}
	slices.Sort(delays)
	b.ReportMetric(nearestRank(delays, 0.50), "p50-µs")
	b.ReportMetric(nearestRank(delays, 0.99), "p99-µs")
	b.ReportMetric(nearestRank(delays, 1), "max-µs")
}

// nearestRank returns the q-quantile (nearest rank) of sorted delays, in
// microseconds.
func nearestRank(sorted []time.Duration, q float64) float64 {
	i := max(int(math.Ceil(q*float64(len(sorted))))-1, 0)
	return float64(sorted[i]) / float64(time.Microsecond)
}

// awaitRound waits for one delivery of id to each of propReceivers
// receivers, and appends to delays the time from sent to each receipt (0 if
// the receipt came first). It fails b if a receiver gets anything else, or
// if the deliveries do not all come within busBenchGuard.
func awaitRound(b *testing.B, round int, id string, sent time.Time, deliveries <-chan delivery, guard *time.Timer, delays []time.Duration) []time.Duration {
	b.Helper()
	guard.Reset(busBenchGuard)
	var seen [propReceivers]bool
	for got := range propReceivers {
		select {
		case d := <-deliveries:
			if d.id != id || seen[d.receiver] {
				b.Fatalf("round %d: receiver %d got %q (seen before: %v), want %q once", round, d.receiver, d.id, seen[d.receiver], id)
			}
			seen[d.receiver] = true
			delays = append(delays, max(0, d.at.Sub(sent)))
		case <-guard.C:
			b.Fatalf("round %d: after %v, only %d of %d receivers got %q", round, busBenchGuard, got, propReceivers, id)
		}
	}
	return delays
}

// appliedCounter counts what one receiver applied, and marks the time at
// which the count reaches a goal.
type appliedCounter struct {
	n    atomic.Int64
	goal atomic.Pointer[countGoal]
}

type countGoal struct {
	target int64
	once   sync.Once
	at     time.Time // set before done is closed
	done   chan struct{}
}

func (c *appliedCounter) add(k int64) {
	n := c.n.Add(k)
	if g := c.goal.Load(); g != nil && n >= g.target {
		g.once.Do(func() {
			g.at = time.Now()
			close(g.done)
		})
	}
}

// expect sets the goal to want more than the count so far. Nothing may be
// in flight to the receiver when it is called.
func (c *appliedCounter) expect(want int) *countGoal {
	g := &countGoal{target: c.n.Load() + int64(want), done: make(chan struct{})}
	c.goal.Store(g)
	c.add(0) // a goal of zero is reached at once
	return g
}

// awaitGoals waits until every goal is reached and returns the longest time
// from start until one was.
func awaitGoals(b *testing.B, start time.Time, goals []*countGoal, counters []*appliedCounter, what func() string) time.Duration {
	b.Helper()
	guard := time.NewTimer(busBenchGuard)
	defer guard.Stop()
	var slowest time.Duration
	for r, g := range goals {
		select {
		case <-g.done:
			slowest = max(slowest, g.at.Sub(start))
		case <-guard.C:
			b.Fatalf("receiver %d applied %d of %d after %v; %s", r, counters[r].n.Load(), g.target, busBenchGuard, what())
		}
	}
	return slowest
}

// runWorkers calls f(i) for every i in [0, b.N) from invWorkers goroutines.
func runWorkers(b *testing.B, f func(i int) error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range invWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				if err := f(i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkInvalidationThroughput has 64 goroutines on one node invalidate
// distinct keys while 2 other nodes apply them, against 64 goroutines each
// doing a bare PUBLISH per invalidation to 2 bare subscribers. ns/op is the
// invalidators' time; inv/s is b.N over the time from the start until the
// slowest receiver applied the last key; msgs/inv is the bus messages the
// publishing node sent per invalidation (its group commit at work).
func BenchmarkInvalidationThroughput(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()

	pub := benchNode(b, srv)
	c := benchCache[string](b, pub, busBenchNamespace, benchTTL)
	nodeCounts := make([]*appliedCounter, invReceivers)
	receivers := make([]*tier.Node, invReceivers)
	for r := range invReceivers {
		cnt := &appliedCounter{}
		nodeCounts[r] = cnt
		receivers[r] = busBenchNode(b, srv, func(m *bus.Message) {
			for _, g := range m.Groups {
				if g.Namespace == busBenchNamespace {
					cnt.add(int64(len(g.Keys)))
				}
			}
		})
		benchCache[string](b, receivers[r], busBenchNamespace, benchTTL)
	}
	const rawChannel = "bench:raw-throughput"
	rawCounts := make([]*appliedCounter, invReceivers)
	for r := range rawCounts {
		rawCounts[r] = &appliedCounter{}
	}
	rawSubscribers(b, srv, rawChannel, invReceivers, func(r int, _ string, _ time.Time) { rawCounts[r].add(1) })
	rawPub := srv.Client(b)

	next := 0
	freshKeys := func(n int) []string {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("inv:%010d", next)
			next++
		}
		return keys
	}
	expect := func(counts []*appliedCounter, n int) []*countGoal {
		goals := make([]*countGoal, len(counts))
		for r, cnt := range counts {
			goals[r] = cnt.expect(n)
		}
		return goals
	}

	b.Run("tiercache", func(b *testing.B) {
		keys := freshKeys(b.N)
		goals := expect(nodeCounts, b.N)
		before := pub.Stats()
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		runWorkers(b, func(i int) error { return c.Invalidate(ctx, keys[i]) })
		b.StopTimer()
		if b.Failed() {
			b.FailNow()
		}
		slowest := awaitGoals(b, start, goals, nodeCounts, func() string {
			return fmt.Sprintf("receivers' stats %+v and %+v", receivers[0].Stats(), receivers[1].Stats())
		})
		published := pub.Stats().Published - before.Published
		b.ReportMetric(float64(b.N)/slowest.Seconds(), "inv/s")
		b.ReportMetric(float64(published)/float64(b.N), "msgs/inv")
	})
	b.Run("raw-publish-64", func(b *testing.B) {
		keys := freshKeys(b.N)
		payloads := make([]string, b.N)
		for i, k := range keys {
			payloads[i] = busBenchPayload(b, k, uint64(i+1))
		}
		goals := expect(rawCounts, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		runWorkers(b, func(i int) error { return rawPub.Publish(ctx, rawChannel, payloads[i]).Err() })
		b.StopTimer()
		if b.Failed() {
			b.FailNow()
		}
		slowest := awaitGoals(b, start, goals, rawCounts, func() string { return "bare subscribers" })
		b.ReportMetric(float64(b.N)/slowest.Seconds(), "inv/s")
	})
}
