package tier

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
)

// NewNodeWithHooks is NewNode with test-only interleaving hooks.
func NewNodeWithHooks(ctx context.Context, rdb redis.UniversalClient, cfg NodeConfig, hk *hooks.Points) (*Node, error) {
	return newNode(ctx, rdb, cfg, hk)
}

// WaitL1 blocks until the node's L1 has applied every buffered write.
func WaitL1(n *Node) { n.l1.Wait() }

// L1TTL returns the remaining L1 lifetime of key's entry in c.
func L1TTL[K comparable, V any](c *Cache[K, V], key K) (time.Duration, bool) {
	_, h, err := c.keys.resolve(key)
	if err != nil {
		return 0, false
	}
	return c.node.l1.TTL(h)
}

// EvictL1 deletes key's entry from c's L1, as memory pressure would,
// leaving what the node knows of Redis as it is.
func EvictL1[K comparable, V any](c *Cache[K, V], key K) {
	if _, h, err := c.keys.resolve(key); err == nil {
		c.node.l1.Evict(h)
	}
}

// KnownGroups returns the groups every read of c checks: the fleet's and
// its namespace's.
func KnownGroups[K comparable, V any](c *Cache[K, V]) []string { return c.known }

// DecodeWithDecoder decodes data into v with the CBOR codec's decoder and
// tag check, without Decode's fast path for strings.
func DecodeWithDecoder(data []byte, v any) error {
	if err := cborDec.Unmarshal(data, v); err != nil {
		return err
	}
	return checkTags(data)
}
