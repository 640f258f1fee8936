package tierotel_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// One fresh node, 100 Gets of one key: one fetch (success) whose value
// lands, one Get answered by the fetch and 99 by L1. A second node's Get
// of the key is answered by Redis, without a fetch.
func TestGetsByTier(t *testing.T) {
	srv := redistest.Start(t)
	src := newSource("k", "v")
	ma, mb := newMeters(t), newMeters(t)
	na := newNode(t, srv, tier.NodeConfig{Recorder: ma.rec})
	nb := newNode(t, srv, tier.NodeConfig{Recorder: mb.rec})
	a, b := newCache(t, na, ns, src), newCache(t, nb, ns, src)

	mustGet(t, a, "k")
	settleL1(t, na, syncCache(t, na))
	for range 99 {
		if v := mustGet(t, a, "k"); v != "v" {
			t.Fatalf("Get = %q, want v", v)
		}
	}
	rm := ma.collect()
	obj := nsKV(ns)
	equal(t, "A's answers", points(rm, tierotel.MetricGetDuration, obj), map[string]int64{
		"tiercache.answer=fetch": 1,
		"tiercache.answer=l1":    99,
	})
	equal(t, "A's fetches", points(rm, tierotel.MetricFetchDuration, obj), map[string]int64{"tiercache.fetch.outcome=success": 1})
	equal(t, "A's fetched keys", points(rm, tierotel.MetricFetchKeys, obj), map[string]int64{"tiercache.fetch.outcome=success": 1})
	equal(t, "A's fills", points(rm, tierotel.MetricFills, obj), map[string]int64{"tiercache.fill.result=landed": 1})
	equal(t, "A's waits", points(rm, tierotel.MetricWaitDuration), map[string]int64{})

	if v := mustGet(t, b, "k"); v != "v" {
		t.Fatalf("B's Get = %q, want v", v)
	}
	rm = mb.collect()
	equal(t, "B's answers", points(rm, tierotel.MetricGetDuration), map[string]int64{
		"tiercache.answer=l2,tiercache.namespace=obj": 1,
	})
	equal(t, "B's fetches", points(rm, tierotel.MetricFetchDuration), map[string]int64{})
	equal(t, "B's fills", points(rm, tierotel.MetricFills), map[string]int64{})
}

// Each scope of invalidation, published on A, is counted there, and
// applied on B with one observation of its delay per message.
func TestInvalidationScopes(t *testing.T) {
	srv := redistest.Start(t)
	src := newSource("k", "v")
	ma, mb := newMeters(t), newMeters(t)
	na := newNode(t, srv, tier.NodeConfig{Recorder: ma.rec})
	nb := newNode(t, srv, tier.NodeConfig{Recorder: mb.rec})
	a := newCache(t, na, ns, src)
	newCache(t, nb, ns, src)
	ctx := context.Background()

	// B estimates a message's delay once it has sampled Redis's clock,
	// which it does before each lease renewal.
	eventually(t, "B's first lease", func() bool {
		return points(mb.collect(), tierotel.MetricLeaseEvents)["tiercache.lease.event=renewed"] > 0
	})

	steps := []struct {
		name      string
		do        func() error
		published map[string]int64 // on A, cumulative
		applied   map[string]int64 // on B, cumulative
		delays    map[string]int64 // on B, cumulative
	}{{
		name: "Invalidate",
		do:   func() error { return a.Invalidate(ctx, "k") },
		published: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys": 1,
		},
		applied: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys": 1,
		},
		delays: map[string]int64{"tiercache.scope=keys": 1},
	}, {
		name: "InvalidateGroup",
		do:   func() error { return na.InvalidateGroup(ctx, "g1", "g2") },
		published: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys": 1,
			"tiercache.scope=groups":                       2,
		},
		applied: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys": 1,
			"tiercache.scope=groups":                       2,
		},
		delays: map[string]int64{"tiercache.scope=keys": 1, "tiercache.scope=groups": 1},
	}, {
		name: "InvalidateAll",
		do:   func() error { return a.InvalidateAll(ctx) },
		published: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys":      1,
			"tiercache.scope=groups":                            2,
			"tiercache.namespace=obj,tiercache.scope=namespace": 1,
		},
		applied: map[string]int64{
			"tiercache.namespace=obj,tiercache.scope=keys":      1,
			"tiercache.scope=groups":                            2,
			"tiercache.namespace=obj,tiercache.scope=namespace": 1,
		},
		delays: map[string]int64{"tiercache.scope=keys": 1, "tiercache.scope=groups": 1, "tiercache.scope=namespace": 1},
	}}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		equal(t, s.name+": A's published", points(ma.collect(), tierotel.MetricInvalidationsPublished), s.published)
		// B counts a message applied, then records its delay: wait for
		// both, or a collection between the two sees the delay's data
		// point before its count.
		eventually(t, s.name+" applied on B", func() bool {
			rm := mb.collect()
			return len(points(rm, tierotel.MetricInvalidationsApplied)) == len(s.applied) &&
				total(points(rm, tierotel.MetricInvalidationDelay)) == total(s.delays)
		})
		rm := mb.collect()
		equal(t, s.name+": B's applied", points(rm, tierotel.MetricInvalidationsApplied), s.applied)
		equal(t, s.name+": B's delays", points(rm, tierotel.MetricInvalidationDelay), s.delays)
		equal(t, s.name+": B's published", points(rm, tierotel.MetricInvalidationsPublished), map[string]int64{})
		// A's own messages are not "applied" there.
		equal(t, s.name+": A's applied", points(ma.collect(), tierotel.MetricInvalidationsApplied), map[string]int64{})
	}

	// A fleet flush drops B's L1.
	if err := na.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the flush on B", func() bool {
		return points(mb.collect(), tierotel.MetricL1Drops)["tiercache.drop.reason=flush"] == 1
	})
}

// A Fetch's outcome is its error's class; the Get's answer follows.
func TestFetchOutcomes(t *testing.T) {
	srv := redistest.Start(t)
	cases := []struct {
		name    string
		fetch   func(ctx context.Context, key string) (string, error)
		outcome string
		answer  string
		fills   map[string]int64
	}{{
		name:    "not found",
		fetch:   func(context.Context, string) (string, error) { return "", fmt.Errorf("no row: %w", tier.ErrNotFound) },
		outcome: "not_found",
		answer:  "fetch",
		fills:   map[string]int64{},
	}, {
		name:    "error",
		fetch:   func(context.Context, string) (string, error) { return "", errors.New("database down") },
		outcome: "load_error",
		answer:  "error",
		fills:   map[string]int64{},
	}, {
		name:    "panic",
		fetch:   func(context.Context, string) (string, error) { panic("boom") },
		outcome: "panic",
		answer:  "error",
		fills:   map[string]int64{},
	}, {
		// The source's own deadline, such as a database client's.
		name: "timeout",
		fetch: func(context.Context, string) (string, error) {
			return "", fmt.Errorf("query: %w", context.DeadlineExceeded)
		},
		outcome: "timeout",
		answer:  "error",
		fills:   map[string]int64{},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMeters(t)
			n := newNode(t, srv, tier.NodeConfig{Recorder: m.rec, Prefix: fmt.Sprintf("t%d", time.Now().UnixNano())})
			c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: tc.fetch})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Get(context.Background(), "k")
			rm := m.collect()
			obj := nsKV(ns)
			want := map[string]int64{"tiercache.fetch.outcome=" + tc.outcome: 1}
			equal(t, "fetches", points(rm, tierotel.MetricFetchDuration, obj), want)
			equal(t, "fetched keys", points(rm, tierotel.MetricFetchKeys, obj), want)
			equal(t, "answers", points(rm, tierotel.MetricGetDuration, obj), map[string]int64{"tiercache.answer=" + tc.answer: 1})
			equal(t, "fills", points(rm, tierotel.MetricFills, obj), tc.fills)
		})
	}
}

// A Fetch whose every caller gave up is cancelled, and recorded so once it
// returns, after the Get.
func TestFetchCanceled(t *testing.T) {
	srv := redistest.Start(t)
	m := newMeters(t)
	n := newNode(t, srv, tier.NodeConfig{Recorder: m.rec})
	started := make(chan struct{})
	src := &source{fetch: func(ctx context.Context, _ string) (string, error) {
		close(started)
		<-ctx.Done()
		return "", ctx.Err()
	}}
	c := newCache(t, n, ns, src)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get = %v, want context.Canceled", err)
	}
	eventually(t, "the cancelled fetch", func() bool {
		return len(points(m.collect(), tierotel.MetricFetchDuration)) > 0
	})
	rm := m.collect()
	obj := nsKV(ns)
	equal(t, "fetches", points(rm, tierotel.MetricFetchDuration, obj), map[string]int64{"tiercache.fetch.outcome=canceled": 1})
	equal(t, "answers", points(rm, tierotel.MetricGetDuration, obj), map[string]int64{"tiercache.answer=error": 1})
}

// Observe reads the node's state at each collection, until unregistered.
func TestObserve(t *testing.T) {
	srv := redistest.Start(t)
	m := newMeters(t)
	n := newNode(t, srv, tier.NodeConfig{Recorder: m.rec, L1MaxBytes: 1 << 20})
	c := newCache(t, n, ns, newSource("k", "v"))
	reg, err := m.rec.Observe(n)
	if err != nil {
		t.Fatal(err)
	}

	mustGet(t, c, "k")
	settleL1(t, n, syncCache(t, n))
	rm := m.collect()
	if u := points(rm, tierotel.MetricL1Usage)[""]; u <= 0 {
		t.Fatalf("L1 usage = %d after two fills, want > 0", u)
	}
	for name, want := range map[string]int64{
		tierotel.MetricL1Limit:               1 << 20,
		tierotel.MetricInvalidationPending:   0,
		tierotel.MetricInvalidationOverflows: 0,
		tierotel.MetricBreakerOpen:           0,
		tierotel.MetricL1Evictions:           0,
		tierotel.MetricRecorderPanics:        0,
	} {
		equal(t, name, points(rm, name), map[string]int64{"": want})
	}
	for _, name := range []string{tierotel.MetricRefreshes, tierotel.MetricFailSafeFetches, tierotel.MetricOutageAnswers} {
		equal(t, name, points(rm, name), map[string]int64{"tiercache.namespace=obj": 0, "tiercache.namespace=sync": 0})
	}
	equal(t, tierotel.MetricL2Rejects, points(rm, tierotel.MetricL2Rejects, nsKV(ns)), map[string]int64{
		"tiercache.reject.reason=group_stale": 0,
		"tiercache.reject.reason=corrupt":     0,
	})

	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	if got := points(m.collect(), tierotel.MetricL1Usage); len(got) != 0 {
		t.Fatalf("L1 usage after Unregister = %v, want no point", got)
	}
	if _, err := m.rec.Observe(nil); err == nil {
		t.Fatal("Observe(nil) did not fail")
	}
}

// While Redis is down, the breaker opens, a Get's read fails and an
// invalidation waits in the queue; when Redis is back, the breaker closes
// and the queue drains.
func TestOutage(t *testing.T) {
	srv := redistest.Start(t)
	m := newMeters(t)
	n := newNode(t, srv, tier.NodeConfig{Recorder: m.rec})
	c := newCache(t, n, ns, newSource("k", "v"))
	reg, err := m.rec.Observe(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	ctx := context.Background()

	srv.Kill()
	if v := mustGet(t, c, "k"); v != "v" { // from the source, uncached
		t.Fatalf("Get during the outage = %q", v)
	}
	if err := c.Invalidate(ctx, "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate during the outage: %v, want ErrPending", err)
	}
	rm := m.collect()
	equal(t, "breaker open", points(rm, tierotel.MetricBreakerOpen), map[string]int64{"": 1})
	equal(t, "pending", points(rm, tierotel.MetricInvalidationPending), map[string]int64{"": 1})
	if got := points(rm, tierotel.MetricBreakerTransitions); got["tiercache.breaker.state=open"] < 1 {
		t.Fatalf("breaker transitions = %v, want an opening", got)
	}
	if got := points(rm, tierotel.MetricRedisErrors, nsKV(ns)); len(got) == 0 {
		t.Fatalf("no Redis error of namespace obj recorded; all: %v", points(rm, tierotel.MetricRedisErrors))
	}
	if got := points(rm, tierotel.MetricGetDuration, nsKV(ns)); got["tiercache.answer=uncached"] != 1 {
		t.Fatalf("answers = %v, want one uncached", got)
	}

	srv.Restart()
	eventually(t, "the queue to drain and the breaker to close", func() bool {
		rm := m.collect()
		return points(rm, tierotel.MetricInvalidationPending)[""] == 0 &&
			points(rm, tierotel.MetricBreakerOpen)[""] == 0 &&
			points(rm, tierotel.MetricBreakerTransitions)["tiercache.breaker.state=closed"] >= 1
	})
}

// Each method of the Recorder records what its documentation says, with
// the attributes of WithAttributes on every measurement; an unknown delay
// is counted but not observed.
func TestRecorderMethods(t *testing.T) {
	node := attribute.String("service.instance.id", "n1")
	m := newMeters(t, tierotel.WithAttributes(node))
	r := m.rec
	r.Get(ns, tier.AnswerStale, time.Millisecond)
	r.Get(ns, tier.Answer(200), time.Millisecond) // a value a later core may add
	r.Fetch(ns, tier.FetchSuccess, 3, time.Millisecond)
	r.Fill(ns, tier.FillFenced)
	r.Wait(ns, tier.WakePoll, time.Millisecond)
	r.Published("", tier.ScopeFleet, 1)
	r.Applied(ns, tier.ScopeKeys, 4, -1)
	r.Applied(ns, tier.ScopeKeys, 2, time.Millisecond)
	r.Lease(tier.LeaseLapsed)
	r.Dropped(tier.DropGap)
	r.Breaker(true)
	r.Breaker(false)
	r.Replayed(5)
	r.RedisError(ns, "read", tier.RedisTimeout)
	r.RedisError("", "publish", tier.RedisUnavailable)
	r.Resource("rates", tier.ResourceLoaded, time.Second)
	r.Resource("rates", tier.ResourceFetched, time.Millisecond)
	r.Resource("rates", tier.ResourceEvent(200), 0) // a value a later core may add

	rm := m.collect()
	for _, tc := range []struct {
		name string
		want map[string]int64
	}{
		{tierotel.MetricGetDuration, map[string]int64{"tiercache.answer=stale,tiercache.namespace=obj": 1, "tiercache.answer=error,tiercache.namespace=obj": 1}},
		{tierotel.MetricFetchDuration, map[string]int64{"tiercache.fetch.outcome=success,tiercache.namespace=obj": 1}},
		{tierotel.MetricFetchKeys, map[string]int64{"tiercache.fetch.outcome=success,tiercache.namespace=obj": 3}},
		{tierotel.MetricFills, map[string]int64{"tiercache.fill.result=fenced,tiercache.namespace=obj": 1}},
		{tierotel.MetricWaitDuration, map[string]int64{"tiercache.namespace=obj,tiercache.wake=poll": 1}},
		{tierotel.MetricInvalidationsPublished, map[string]int64{"tiercache.scope=fleet": 1}},
		{tierotel.MetricInvalidationsApplied, map[string]int64{"tiercache.namespace=obj,tiercache.scope=keys": 6}},
		{tierotel.MetricInvalidationDelay, map[string]int64{"tiercache.scope=keys": 1}},
		{tierotel.MetricLeaseEvents, map[string]int64{"tiercache.lease.event=lapsed": 1}},
		{tierotel.MetricL1Drops, map[string]int64{"tiercache.drop.reason=gap": 1}},
		{tierotel.MetricBreakerTransitions, map[string]int64{"tiercache.breaker.state=open": 1, "tiercache.breaker.state=closed": 1}},
		{tierotel.MetricInvalidationsReplayed, map[string]int64{"": 5}},
		{tierotel.MetricRedisErrors, map[string]int64{
			"error.type=timeout,tiercache.namespace=obj,tiercache.redis.op=read": 1,
			"error.type=unavailable,tiercache.redis.op=publish":                  1,
		}},
		{tierotel.MetricResourceEvents, map[string]int64{
			"tiercache.resource.event=success,tiercache.resource=rates": 1,
			// The unknown event's String is the last known one's.
			"tiercache.resource.event=fetched,tiercache.resource=rates": 2,
		}},
		{tierotel.MetricResourceLoadDuration, map[string]int64{"tiercache.resource.event=success,tiercache.resource=rates": 1}},
	} {
		equal(t, tc.name, points(rm, tc.name, node), tc.want)
		if all := points(rm, tc.name); len(all) != len(tc.want) {
			t.Fatalf("%s has points without %v: %v", tc.name, node, all)
		}
	}
}

// After its first event of a namespace, recording allocates nothing.
func TestRecordingDoesNotAllocate(t *testing.T) {
	r := newMeters(t).rec
	events := map[string]func(){
		"Get":        func() { r.Get(ns, tier.AnswerL1, time.Microsecond) },
		"Fetch":      func() { r.Fetch(ns, tier.FetchSuccess, 1, time.Millisecond) },
		"Fill":       func() { r.Fill(ns, tier.FillLanded) },
		"Wait":       func() { r.Wait(ns, tier.WakeMessage, time.Millisecond) },
		"Published":  func() { r.Published(ns, tier.ScopeKeys, 1) },
		"Applied":    func() { r.Applied(ns, tier.ScopeKeys, 1, time.Millisecond) },
		"Lease":      func() { r.Lease(tier.LeaseRenewed) },
		"Dropped":    func() { r.Dropped(tier.DropGap) },
		"Breaker":    func() { r.Breaker(true) },
		"Replayed":   func() { r.Replayed(1) },
		"RedisError": func() { r.RedisError(ns, "read", tier.RedisTimeout) },
		"Resource":   func() { r.Resource("rates", tier.ResourceLoaded, time.Second) },
	}
	for name, f := range events {
		f() // the first event of the namespace builds its attribute sets
		if a := testing.AllocsPerRun(100, f); a != 0 {
			t.Errorf("%s: %.1f allocations per event, want 0", name, a)
		}
	}
}

// Options that cannot work are errors, not panics.
func TestBadOptions(t *testing.T) {
	if _, err := tierotel.NewRecorder(tierotel.WithMeterProvider(nil)); err == nil {
		t.Error("NewRecorder(WithMeterProvider(nil)) did not fail")
	}
}

// total returns the sum of the values of m.
func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
