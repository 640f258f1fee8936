package safelog

import (
	"context"
	"log/slog"
)

// New returns a logger that writes through l's handler and recovers that
// handler's panics, in each of its methods (see the package doc). onPanic,
// if not nil, is called once for each panic recovered, from the goroutine
// that logged; it must not log through the returned logger. A nil l means
// slog.Default().
func New(l *slog.Logger, onPanic func()) *slog.Logger {
	if l == nil {
		l = slog.Default()
	}
	return slog.New(handler{h: l.Handler(), onPanic: onPanic})
}

// handler is a slog.Handler that recovers the panics of the one it wraps.
type handler struct {
	h       slog.Handler
	onPanic func()
}

// panicked reports whether r, what recover returned, is a panic, and if
// so tells onPanic.
func (g handler) panicked(r any) bool {
	if r == nil {
		return false
	}
	if g.onPanic != nil {
		g.onPanic()
	}
	return true
}

// Enabled reports the wrapped handler's answer, or false if it panicked:
// the record is not built.
func (g handler) Enabled(ctx context.Context, l slog.Level) (ok bool) {
	defer func() {
		if g.panicked(recover()) {
			ok = false
		}
	}()
	return g.h.Enabled(ctx, l)
}

// Handle hands r to the wrapped handler; if it panics, r is lost and
// Handle returns nil, as the caller has nothing to do about it.
func (g handler) Handle(ctx context.Context, r slog.Record) error {
	defer func() { g.panicked(recover()) }()
	return g.h.Handle(ctx, r)
}

// WithAttrs returns the wrapped handler's, guarded; if it panics, the
// attributes are lost and g itself is returned.
func (g handler) WithAttrs(attrs []slog.Attr) (h slog.Handler) {
	defer func() {
		if g.panicked(recover()) {
			h = g
		}
	}()
	return handler{h: g.h.WithAttrs(attrs), onPanic: g.onPanic}
}

// WithGroup returns the wrapped handler's, guarded; if it panics, the
// group is lost and g itself is returned.
func (g handler) WithGroup(name string) (h slog.Handler) {
	defer func() {
		if g.panicked(recover()) {
			h = g
		}
	}()
	return handler{h: g.h.WithGroup(name), onPanic: g.onPanic}
}
