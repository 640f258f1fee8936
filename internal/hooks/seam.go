package hooks

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// NewNode, set by the tier package when it is linked in, is tier's hooked
// node constructor: cfg is a tier.NodeConfig and the result a *tier.Node.
// It lets a harness outside package tier (the simulation) build nodes with
// Points for its negative controls without a public API for them. It is
// typed with any because package tier imports this one.
var NewNode func(ctx context.Context, rdb redis.UniversalClient, cfg any, p *Points) (any, error)
