package tier

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/l2"
)

// wakers are the loads on this node waiting for another claimant's value,
// by the key's Redis name. A claimant that fills, releases or fails a key
// that readers marked as waited on announces it on the wake channel
// (l2.Store.WakeChannel); an invalidation wakes them through the bus. Either way
// they read again at once instead of at their next poll. A lost message
// costs one poll interval, never correctness: waiters still poll.
type wakers struct {
	mu    sync.Mutex
	m     map[string]*waiting
	count atomic.Int64 // registered waits, so that wake is free when none
}

type waiting struct {
	ch   chan struct{}
	refs int
}

// add registers a wait for key and returns the channel that wake closes.
func (w *wakers) add(key string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = make(map[string]*waiting)
	}
	wt := w.m[key]
	if wt == nil {
		wt = &waiting{ch: make(chan struct{})}
		w.m[key] = wt
	}
	wt.refs++
	w.count.Add(1)
	return wt.ch
}

// done ends a wait registered by add.
func (w *wakers) done(key string, ch <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count.Add(-1)
	if wt := w.m[key]; wt != nil && wt.ch == ch {
		if wt.refs--; wt.refs == 0 {
			delete(w.m, key)
		}
	}
}

// wake wakes every wait for key.
func (w *wakers) wake(key string) {
	if w.count.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if wt := w.m[key]; wt != nil {
		close(wt.ch)
		delete(w.m, key)
	}
}

// wait waits, on a registration ch of key made by add, for d, a wake, or
// the end of ctx, and ends the registration. It reports whether a wake
// ended it.
func (w *wakers) wait(ctx context.Context, key string, ch <-chan struct{}, d time.Duration) (bool, error) {
	defer w.done(key, ch)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true, nil
	case <-t.C:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// wakeKey wakes this node's waiters for key s of namespace ns: the key was
// invalidated or written.
func (n *Node) wakeKey(ns, s string) {
	if n.wakers.count.Load() == 0 {
		return
	}
	n.wakers.wake(l2.KeysFor(n.cfg.Prefix, ns, s).Value)
}
