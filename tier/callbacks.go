package tier

import (
	"fmt"
	"runtime/debug"
)

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

// apart runs f, which calls the caller's code, on a goroutine of its own
// and waits for it: code that ends its goroutine (runtime.Goexit, as a
// test's t.FailNow does) ends that one, and the caller goes on (R37). For
// code called in the middle of an operation that must finish, such as the
// breaker's change of state, which the Redis operation that caused it
// reports.
func apart(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}
