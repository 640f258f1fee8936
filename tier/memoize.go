package tier

import (
	"context"
	"fmt"
)

// Memoize caches fn, a function of one comparable argument (a struct of
// them for a function of several), in a Cache of cfg.Namespace on n, with
// cfg's other settings: the returned Cache's Get is fn, memoized in both
// tiers for the whole fleet, with every guarantee of Get, and its
// Invalidate forgets a call's result everywhere.
//
// A struct argument of strings, integers, booleans and times (and structs
// of them) needs no Config.Key: its canonical form is derived from its
// fields, injectively, two times being the same argument if they are the
// same instant. Any other argument type needs Config.Key.
//
//	type query struct {
//		Category int64
//		Term     string
//		InStock  bool
//	}
//	search, err := tier.Memoize(node, tier.Config[query, []Product]{Namespace: "search", TTL: time.Minute}, db.Search)
//	products, err := search.Get(ctx, query{Category: 7, Term: "lamp"})
func Memoize[A comparable, V any](n *Node, cfg Config[A, V], fn func(ctx context.Context, args A) (V, error)) (*Cache[A, V], error) {
	if fn == nil {
		return nil, fmt.Errorf("%w: nil function to memoize", ErrConfig)
	}
	cfg.Fetch = fn
	return New(n, cfg)
}
