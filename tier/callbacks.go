package tier

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// guardedHandler is NodeConfig.Logger's handler, recovering its panics: a
// handler that panics loses its record, never the goroutine that logged (a
// Get, a flight's end, the bus's subscriber, the replay of pending writes).
// Its panics are counted with the Recorder's (Stats.RecorderPanics), not
// logged.
type guardedHandler struct {
	h slog.Handler
	n *Node
}

// panicked counts r, what recover returned in a call of the handler, if it
// is a panic.
func (g guardedHandler) panicked(r any) bool {
	if r == nil {
		return false
	}
	g.n.stats.recorderPanics.Add(1)
	return true
}

func (g guardedHandler) Enabled(ctx context.Context, l slog.Level) (ok bool) {
	defer func() {
		if g.panicked(recover()) {
			ok = false
		}
	}()
	return g.h.Enabled(ctx, l)
}

func (g guardedHandler) Handle(ctx context.Context, r slog.Record) error {
	defer func() { g.panicked(recover()) }()
	return g.h.Handle(ctx, r)
}

func (g guardedHandler) WithAttrs(attrs []slog.Attr) (h slog.Handler) {
	defer func() {
		if g.panicked(recover()) {
			h = g
		}
	}()
	return guardedHandler{h: g.h.WithAttrs(attrs), n: g.n}
}

func (g guardedHandler) WithGroup(name string) (h slog.Handler) {
	defer func() {
		if g.panicked(recover()) {
			h = g
		}
	}()
	return guardedHandler{h: g.h.WithGroup(name), n: g.n}
}

// panicked turns a recovered panic of the user callback named what into an
// error wrapping ErrPanic, and logs it with its stack.
func (n *Node) panicked(what, namespace string, r any) error {
	n.log.Error("tiercache: callback panicked", "callback", what, "namespace", namespace, "panic", r, "stack", string(debug.Stack()))
	return fmt.Errorf("%w: %s: %v", ErrPanic, what, r)
}

// guarded calls f, a user callback named what (or code that calls one),
// turning a panic in it into an error wrapping ErrPanic (R37).
func guarded[T any](n *Node, what, namespace string, f func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = n.panicked(what, namespace, r)
		}
	}()
	return f()
}

// hitHook adapts Config.OnHit: a panic becomes an error.
func hitHook[K comparable](n *Node, namespace string, f func(K, Source)) func(K, Source) error {
	if f == nil {
		return nil
	}
	return func(key K, src Source) error {
		_, err := guarded(n, "OnHit", namespace, func() (struct{}, error) { f(key, src); return struct{}{}, nil })
		return err
	}
}

// missHook adapts Config.OnMiss: a panic becomes an error.
func missHook[K comparable](n *Node, namespace string, f func(K)) func(K) error {
	if f == nil {
		return nil
	}
	return func(key K) error {
		_, err := guarded(n, "OnMiss", namespace, func() (struct{}, error) { f(key); return struct{}{}, nil })
		return err
	}
}
