package sqlsource

import "github.com/tiercache/tiercache/tier"

// NewResource returns a tier.Resource of the whole table (the rows Where
// admits, at most MaxRows): its Load is t.LoadAll, as kiwi-cache's
// SQLAlchemyResource is a table's. cfg's Load is replaced; its other
// settings (Name, ReloadEvery, TTL, ...) are the Resource's.
func NewResource[K comparable, V any](n *tier.Node, t *Table[K, V], cfg tier.ResourceConfig[K, V]) (*tier.Resource[K, V], error) {
	cfg.Load = t.LoadAll
	return tier.NewResource(n, cfg)
}
