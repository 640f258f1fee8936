package tier

import (
	"context"
	"fmt"

	"github.com/tiercache/tiercache/bus"
)

// Target names something an invalidation makes stale: keys of a Cache
// (KeysOf), keys of a namespace by their string form (Keys), a whole
// namespace (Namespace), or groups (Groups). Node.Invalidate takes any
// number of them and applies them together.
type Target struct {
	scope Scope
	ns    string   // ScopeKeys, ScopeNamespace
	names []string // keys' string forms, or groups
	owner *Node    // KeysOf: the Cache's node
	m     *meter   // KeysOf: the Cache's counters
	err   error
}

// KeysOf names keys of cache c.
func KeysOf[K comparable, V any](c *Cache[K, V], keys ...K) Target {
	t := Target{scope: ScopeKeys, ns: c.ns, owner: c.node, m: c.m, names: make([]string, len(keys))}
	for i, k := range keys {
		s, _, err := c.keys.resolve(k)
		if err != nil {
			t.err = fmt.Errorf("key %d of %q: %w", i, c.ns, err)
			return t
		}
		t.names[i] = s
	}
	return t
}

// Keys names keys of a namespace by their string form (Config.Key's, or
// the default: the string itself, or an integer's decimal form), for
// invalidations that come from outside the program, such as a database's
// notifications. The node need not hold a Cache of the namespace.
func Keys(namespace string, keys ...string) Target {
	return Target{scope: ScopeKeys, ns: namespace, names: keys}
}

// Namespace names every entry of a namespace, as Cache.InvalidateAll does:
// in constant time, however many entries it has.
func Namespace(namespace string) Target {
	return Target{scope: ScopeNamespace, ns: namespace}
}

// Groups names groups, as Node.InvalidateGroup does.
func Groups(names ...string) Target {
	return Target{scope: ScopeGroups, names: names}
}

// ops returns t's bus ops, or the error that makes t invalid on n.
func (t Target) ops(n *Node) ([]bus.Op, error) {
	if t.err != nil {
		return nil, t.err
	}
	if t.owner != nil && t.owner != n {
		return nil, fmt.Errorf("%w: keys of a Cache of another Node", ErrConfig)
	}
	if t.scope != ScopeGroups {
		if err := CheckNamespace(t.ns); err != nil {
			return nil, err
		}
	}
	switch t.scope {
	case ScopeNamespace:
		return []bus.Op{{Group: namespaceGroup(t.ns)}}, nil
	case ScopeGroups:
		ops := make([]bus.Op, len(t.names))
		for i, g := range t.names {
			if err := CheckGroup(g); err != nil {
				return nil, err
			}
			ops[i] = bus.Op{Group: g}
		}
		return ops, nil
	}
	ops := make([]bus.Op, len(t.names))
	for i, k := range t.names {
		switch {
		case k == "":
			return nil, fmt.Errorf("key %d of %q: %w", i, t.ns, ErrEmptyKey)
		case len(k) > n.cfg.MaxKeyBytes:
			return nil, fmt.Errorf("key %d of %q: %w: %d bytes, limit %d", i, t.ns, ErrKeyTooLarge, len(k), n.cfg.MaxKeyBytes)
		}
		ops[i] = bus.Op{Namespace: t.ns, Key: k}
	}
	return ops, nil
}

// record counts t's invalidations as published by n.
func (t Target) record(n *Node, count int) {
	switch {
	case t.scope != ScopeKeys:
		n.stats.groupInvalidations.Add(uint64(count))
		n.recordGroups(t.groupNames(), func(ns string, s Scope, k int) { n.rec.Published(ns, s, k) })
	case t.m != nil:
		t.m.published(ScopeKeys, count)
	default:
		n.countKeys(t.ns, count)
	}
}

// countKeys counts count keys of namespace that this node invalidated, in
// the counters of its Cache of the namespace if it has one, else in its
// own.
func (n *Node) countKeys(namespace string, count int) {
	if m := n.meterOf(namespace); m != nil {
		m.published(ScopeKeys, count)
		return
	}
	n.stats.invalidate.Add(uint64(count))
	if n.rec != nil {
		n.rec.Published(namespace, ScopeKeys, count)
	}
}

// groupNames returns the groups t invalidates.
func (t Target) groupNames() []string {
	if t.scope == ScopeNamespace {
		return []string{namespaceGroup(t.ns)}
	}
	return t.names
}

// Invalidate makes every target stale on every node, in both tiers, in one
// atomic round trip to Redis and one message on the bus: a write that
// changes an object and the lists it appears in invalidates both at once,
//
//	err := node.Invalidate(ctx, tier.KeysOf(products, 42), tier.Groups("category:7"))
//
// Each target has the guarantee of its own call (Cache.Invalidate,
// Cache.InvalidateAll, Node.InvalidateGroup): before Invalidate returns,
// this node serves none of what it names, and no fetch that began before
// can fill either tier with it. If Redis fails, the local effect still
// applies, the invalidations are queued for replay, and the error wraps
// ErrPending. Invalid targets are reported before anything is done.
func (n *Node) Invalidate(ctx context.Context, targets ...Target) error {
	bad, err := n.invalidate(ctx, targets)
	switch {
	case bad >= 0:
		return fmt.Errorf("tier invalidate: target %d: %w", bad, err)
	case err != nil:
		return fmt.Errorf("tier invalidate: %w", err)
	}
	return nil
}

// invalidate is every invalidation's way in: Node.Invalidate, and the
// calls that name one target (Cache.Invalidate, InvalidateAll,
// Node.InvalidateGroup). It returns the index of the first invalid target
// and its error, before anything is done, or -1 and the error of the
// publish (ErrClosed, or one wrapping ErrPending).
func (n *Node) invalidate(ctx context.Context, targets []Target) (int, error) {
	var (
		ops    []bus.Op
		counts = make([]int, len(targets))
	)
	for i, t := range targets {
		tops, err := t.ops(n)
		if err != nil {
			return i, err
		}
		ops = append(ops, tops...)
		counts[i] = len(tops)
	}
	if len(ops) == 0 {
		return -1, nil
	}
	if n.isClosed() {
		return -1, ErrClosed
	}
	for i, t := range targets {
		t.record(n, counts[i])
	}
	return -1, n.publish(ctx, ops)
}

// meterOf returns the counters of the node's Cache of namespace, or nil.
func (n *Node) meterOf(namespace string) *meter {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.caches[namespace]; c != nil {
		return c.meter()
	}
	return nil
}
