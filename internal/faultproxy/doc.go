// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a real server. It is for tests and the race
// simulation only: nothing else may import it. [Start] takes the test's
// testing.TB; [New] is the same proxy for the simulation's command, which
// has no test.
//
// A test puts a [Proxy] between a go-redis client and a private
// redis-server (started by internal/redistest), points the client at
// [Proxy.Addr], and switches faults on and off while the client works against
// the real server:
//
//	srv := redistest.Start(t)
//	p := faultproxy.Start(t, srv.Addr())
//	c := redis.NewClient(&redis.Options{Addr: p.Addr()})
//	p.Blackhole()
//	// ... the client's commands time out ...
//	p.Pass()
//
// The faults, and what each one simulates:
//
//   - [Proxy.Pass] forwards bytes unchanged. It is the default, and it ends
//     any fault.
//   - [Proxy.Delay] simulates a slow network: every chunk read from either
//     side is held for the delay before it is written to the other side, on
//     existing and new connections alike.
//   - [Proxy.Refuse] simulates Redis being down or its port closed: new
//     connections are accepted and reset at once (the client sees the reset
//     either as a failed connect or on its first read), and existing ones
//     are reset.
//   - [Proxy.Reset] simulates a connection killed on the way (a firewall, a
//     crashed load balancer, CLIENT KILL): every existing connection is reset
//     now, in both directions; new connections pass.
//   - [Proxy.Blackhole] simulates a network partition, where packets are
//     silently lost: nothing is forwarded in either direction and nothing is
//     closed, so a reader just waits until its own timeout. Bytes sent
//     during the fault are dropped, never delivered later; a close (FIN or
//     RST) from either side is held back until the fault ends.
//
// A reset is a close with SO_LINGER set to 0, so the peer gets a TCP RST
// (ECONNRESET, "connection reset by peer") instead of an orderly EOF.
//
// Mechanism: every accepted connection is paired with a fresh connection to
// the target, and two goroutines copy one direction each. A copying goroutine
// reads the current fault after every read, so a change takes effect on the
// next chunk; a chunk held by [Proxy.Delay] is re-evaluated whenever the
// fault changes, so [Proxy.Pass] releases it at once. A connection is dialled
// to the target even while the proxy is blackholed (the kernel completes the
// client's handshake anyway); only its bytes are dropped.
//
// Thread safety: every method of [Proxy] is safe for concurrent use.
// [Proxy.Close] stops listening, closes every connection and waits for every
// goroutine the proxy started, so none outlives it (go.uber.org/goleak
// checks this in the package's tests). [Start] registers Close with
// t.Cleanup.
package faultproxy
