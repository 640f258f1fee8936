package tier_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkWaitReplicas measures what NodeConfig.WaitReplicas costs a write:
// Invalidate of one key with and without waiting for one replica, beside the
// bare Redis work in the same run (DEL, and DEL then WAIT 1 on one
// connection). The replica is a second redis-server on this machine, so the
// figure is the replication round trip of a local replica; across a network
// it grows by the round trip to the farthest replica waited for.
func BenchmarkWaitReplicas(b *testing.B) {
	const namespace = "bench-wait"
	master := redistest.Start(b, "--repl-diskless-sync-delay", "0")
	host, port, err := net.SplitHostPort(master.Addr())
	if err != nil {
		b.Fatal(err)
	}
	redistest.Start(b, "--replicaof", host, port) // the replica, stopped at cleanup
	rdb := master.Client(b)
	ctx := context.Background()
	if n, err := rdb.Wait(ctx, 1, guard).Result(); err != nil || n != 1 {
		b.Fatalf("the replica does not follow: WAIT = %d, %v", n, err)
	}
	keys := benchKeys("user", benchKeyCount)
	for _, wait := range []int{0, 1} {
		n, err := tier.NewNode(ctx, master.Client(b), tier.NodeConfig{LeaseTTL: time.Minute, WaitReplicas: wait})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Close() })
		c := benchCache[string](b, n, namespace, -1)
		name := "tiercache-Invalidate"
		if wait > 0 {
			name += "-WaitReplicas=1"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := c.Invalidate(ctx, keys[i%benchKeyCount]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	valueKeys := benchValueKeys(namespace, keys)
	b.Run("redis-raw-DEL", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := rdb.Del(ctx, valueKeys[i%benchKeyCount]).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("redis-raw-DEL-WAIT-1", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			pipe := rdb.Pipeline()
			pipe.Del(ctx, valueKeys[i%benchKeyCount])
			w := pipe.Do(ctx, "wait", 1, 1000)
			if _, err := pipe.Exec(ctx); err != nil || w.Val() != int64(1) {
				b.Fatalf("DEL, WAIT = %v, %v", w.Val(), err)
			}
		}
	})
}
