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

// hitHook adapts Config.OnHit: a panic becomes an error.
func hitHook[K comparable](n *Node, namespace string, f func(K, Source)) func(K, Source) error {
	if f == nil {
		return nil
	}
	return func(key K, src Source) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = n.panicked("OnHit", namespace, r)
			}
		}()
		f(key, src)
		return nil
	}
}

// missHook adapts Config.OnMiss: a panic becomes an error.
func missHook[K comparable](n *Node, namespace string, f func(K)) func(K) error {
	if f == nil {
		return nil
	}
	return func(key K) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = n.panicked("OnMiss", namespace, r)
			}
		}()
		f(key)
		return nil
	}
}
