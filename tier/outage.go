package tier

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// outageHook is the hook NewNode adds to the Redis client: a dial that
// Redis refuses (or a host or network that cannot be reached) is proof of
// an outage, not a slow server, so the node's breaker opens at once and
// every operation in flight gives up, instead of each caller waiting for
// RedisTimeout while the client retries; a dial that succeeds while the
// breaker is open makes its probe due at once, so that a restart of Redis
// costs the time it takes, not a BreakerPause. On a Redis Cluster a refused
// dial is proof only that one member is down, while the others serve their
// slots: it is left to the breaker's count of failed operations, and the
// operations on the dead member's slots fail at once by themselves. It
// stays on the client after Close, where it does nothing.
type outageHook struct{ n *Node }

func (h outageHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		switch {
		case h.n.isClosed():
		case err == nil:
			// Redis accepts connections again (the subscription's
			// reconnect, typically): probe now, not a BreakerPause after
			// the breaker opened.
			h.n.breaker.Expedite()
		case refused(err) && !h.n.store.Cluster():
			h.n.outage()
		}
		return conn, err
	}
}

func (outageHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (outageHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// refused reports whether a dial error proves that Redis is down.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// outage opens the breaker at once and ends the Redis operations in
// flight: they fall back as after a timeout.
func (n *Node) outage() {
	if n.breaker.Trip() {
		n.store.Abort()
	}
}
