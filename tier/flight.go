package tier

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// flights runs at most one load per key at a time on this node and shares
// its result with every caller that joined it (docs/RACES.md R02 within a node).
//
// It differs from x/sync/singleflight where the cache needs it to: a
// caller's cancelled ctx returns that caller only, and the shared load is
// cancelled when its last caller has gone, not before; a panic becomes an
// error for every caller rather than a crash; the load runs in a goroutine
// that Node.Close waits for (the caller's own when it cannot leave early,
// see do); and forget ends a flight's membership so that a read that began
// after an invalidation never joins a flight that began before it (R20).
//
// A flight is also closed to new members once it is LeaseTTL old: a read
// that begins then may follow an invalidation that this node missed (its
// bus lost a message, or its lease lapsed) after the flight began, and
// serving the flight's value would break the staleness bound, as serving
// L1 would (R42). So the node need not forget every flight when it loses
// track of its bus (a disconnect, a gap, a lapse), only when it has seen
// every message again (the renewal of a lapsed lease): concurrent reads
// keep sharing one fetch through a Redis outage.
type flights[T any] struct {
	mu sync.Mutex
	m  map[string]*flight[T]
}

type flight[T any] struct {
	start   time.Time // monotonic: when the flight began
	done    chan struct{}
	val     T
	err     error
	waiters int // callers still waiting; guarded by flights.mu
	cancel  context.CancelFunc
	trace   *waiters // with a Tracer: the callers, for the fetch's span
}

// do returns the result of load for key, joining the flight in progress if
// there is one. The flight's context keeps ctx's values, not its
// cancellation; it is cancelled when every caller has gone or the node
// closes. shared reports that the caller joined a flight another began.
//
// A caller whose ctx can never be cancelled (its Done is nil, as
// context.Background's) cannot leave before the load ends, so a flight it
// begins runs the load in its own goroutine rather than a new one: the
// same flight for those who join it, without the handoff between two
// goroutines.
func (g *flights[T]) do(ctx context.Context, n *Node, key string, load func(context.Context) (T, error)) (val T, shared bool, err error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, false, err
	}
	g.mu.Lock()
	f, ok := g.m[key]
	if ok && time.Since(f.start) >= n.cfg.LeaseTTL {
		ok = false // too old to join (R42); it runs on for its members
	}
	var run func() // the load, for a caller that runs it in its goroutine
	if !ok {
		f, run = g.begin(ctx, n, key, load)
		var started bool
		if ctx.Done() == nil {
			started = n.enter() // the caller runs the load, below
		} else {
			started, run = n.spawn(run), nil
		}
		if !started {
			g.mu.Unlock()
			f.cancel()
			return zero, false, ErrClosed
		}
		if g.m == nil {
			g.m = make(map[string]*flight[T])
		}
		g.m[key] = f
	}
	f.waiters++
	g.mu.Unlock()
	if run != nil {
		// Counted by enter: done however this call ends, even if the load
		// calls runtime.Goexit (a test's t.FailNow in Fetch) and never
		// returns; run ends the flight either way.
		defer n.wg.Done()
	}
	if ok && f.trace != nil {
		f.trace.join(ctx)
	}
	if n.hooks != nil && n.hooks.Flight != nil {
		n.hooks.Flight(key, !ok)
	}
	if run != nil {
		run()
		return f.val, false, f.err
	}

	select {
	case <-f.done:
		return f.val, ok, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Nobody wants the result: stop the load, and let the next caller
			// start afresh rather than join a cancelled flight.
			f.cancel()
			if g.m[key] == f {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		return zero, ok, ctx.Err()
	}
}

// begin returns a new flight of key, for ctx, and the function that runs
// its load: it calls load under the flight's context, turns a panic into
// the flight's error, and ends the flight, closing its done channel. The
// caller registers the flight and starts run.
func (g *flights[T]) begin(ctx context.Context, n *Node, key string, load func(context.Context) (T, error)) (*flight[T], func()) {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight[T]{start: time.Now(), done: make(chan struct{}), cancel: cancel}
	if n.tracer != nil {
		f.trace = &waiters{}
		fctx = context.WithValue(fctx, waitersKey{}, f.trace)
	}
	return f, func() {
		stop := context.AfterFunc(n.life, cancel)
		returned := false
		defer func() {
			if r := recover(); r != nil {
				n.log.Error("tiercache: panic in load", "panic", r, "stack", string(debug.Stack()))
				f.err = fmt.Errorf("tier: internal panic: %v", r)
			} else if !returned {
				f.err = errLoadExited
			}
			stop()
			cancel()
			g.mu.Lock()
			if g.m[key] == f {
				delete(g.m, key)
			}
			g.mu.Unlock()
			close(f.done)
		}()
		f.val, f.err = load(fctx)
		returned = true
	}
}

// errLoadExited is the result of a load that ended its goroutine
// (runtime.Goexit, as t.FailNow in a Fetch does) instead of returning: of
// its flight, or of its keys in GetMany (where a panic past every guard
// ends it the same way).
var errLoadExited = errors.New("tier: the load's goroutine ended before the load returned")

// has reports whether a flight of key is running.
func (g *flights[T]) has(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.m[key]
	return ok
}

// forget ends the membership of key's flight: later calls start a new one.
// The old flight runs on for the callers it already has.
func (g *flights[T]) forget(key string) {
	g.mu.Lock()
	delete(g.m, key)
	g.mu.Unlock()
}

// forgetAll ends the membership of every flight: the node lost track of
// which keys were invalidated.
func (g *flights[T]) forgetAll() {
	g.mu.Lock()
	clear(g.m)
	g.mu.Unlock()
}
