package tier

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// forEachMaster calls fn with every master's client on a cluster, at once,
// or with rdb itself on one server.
func forEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, redis.UniversalClient) error) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return fn(ctx, m) })
	}
	return fn(ctx, rdb)
}

// minClusterVersion is the oldest Redis a cluster node may run: the bus
// needs sharded pub/sub (SPUBLISH, SSUBSCRIBE), new in 7.0.
const minClusterVersion = 7

// checkCluster refuses a cluster whose masters cannot serve the protocol
// (older than Redis 7: no sharded pub/sub), and warns about client settings
// that slow recovery from a failover. A cluster that cannot be reached now
// is let through with a warning, as one server would be: the node serves
// from the source until it answers.
func (n *Node) checkCluster(ctx context.Context, c *redis.ClusterClient) error {
	o := c.Options()
	if o.ReadOnly || o.RouteByLatency || o.RouteRandomly {
		// A replica answers reads with what it has replicated so far: the
		// bus's counter, a value or a claim read there may be behind the
		// master that every write goes to.
		return fmt.Errorf("%w: the cluster client reads from replicas (ReadOnly, RouteByLatency or RouteRandomly); tiercache needs every read on the masters", ErrConfig)
	}
	if !o.ContextTimeoutEnabled {
		n.log.Warn("tiercache: the Redis client ignores context deadlines (ContextTimeoutEnabled is false): a stuck connection can hold an operation past RedisTimeout")
	}
	if o.ClusterStateReloadInterval <= 0 || o.ClusterStateReloadInterval > 10*time.Second {
		n.log.Warn("tiercache: the cluster client reloads its slot map rarely (ClusterOptions.ClusterStateReloadInterval); after a failover it keeps sending a dead master's slots to it until the next reload, and the node reads from the source meanwhile; a few seconds is advised")
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RedisTimeout)
	defer cancel()
	var (
		mu  sync.Mutex
		old []string
	)
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		info, err := m.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		v := infoField(info, "redis_version")
		major, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
		if err != nil || major < minClusterVersion {
			mu.Lock()
			old = append(old, m.Options().Addr+" runs "+strconv.Quote(v))
			mu.Unlock()
		}
		return nil
	})
	if len(old) > 0 {
		return fmt.Errorf("%w: Redis Cluster needs Redis %d or later on every master (sharded pub/sub carries the bus): %s", ErrConfig, minClusterVersion, strings.Join(old, ", "))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		n.log.Warn("tiercache: cannot check the cluster's masters; the node starts, and reads from the source until Redis answers", "err", err)
	}
	return nil
}

// infoField returns the value of field in the text of INFO, or "".
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}
