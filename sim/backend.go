package sim

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/alicebob/miniredis/v2"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Backend is the Redis a fleet runs against.
type Backend interface {
	// Name says what the backend is, for the report.
	Name() string
	// Addr is the address nodes dial, "host:port".
	Addr() string
	// Restart restarts the server without persistence, so that every key
	// is gone; it returns an error wrapping errors.ErrUnsupported if the
	// backend cannot.
	Restart() error
	// Owned reports whether the simulation owns the server and may erase
	// it (FLUSHALL).
	Owned() bool
}

// privateRedis is a redis-server process the simulation started.
type privateRedis struct{ s *redistest.Server }

func (p privateRedis) Name() string   { return "private redis-server " + p.s.Addr() }
func (p privateRedis) Addr() string   { return p.s.Addr() }
func (p privateRedis) Restart() error { return p.s.Relaunch() }
func (p privateRedis) Owned() bool    { return true }

// LaunchRedis starts a private redis-server (it must be on PATH) with args
// appended to its command line. Call stop when done.
func LaunchRedis(args ...string) (b Backend, stop func(), err error) {
	s, err := redistest.Launch(args...)
	if err != nil {
		return nil, nil, err
	}
	return privateRedis{s}, s.Stop, nil
}

// embedded is an in-process miniredis.
type embedded struct{ m *miniredis.Miniredis }

func (e embedded) Name() string { return "embedded miniredis " + e.m.Addr() }
func (e embedded) Addr() string { return e.m.Addr() }
func (e embedded) Owned() bool  { return true }

// Restart closes every connection, forgets every key and listens again on
// the same port: a restart without persistence.
func (e embedded) Restart() error {
	e.m.Close()
	e.m.FlushAll()
	if err := e.m.Restart(); err != nil {
		return fmt.Errorf("sim: restarting miniredis: %w", err)
	}
	return nil
}

// StartEmbedded starts an in-process Redis (github.com/alicebob/miniredis),
// for machines without redis-server. It lacks some commands; the faults
// that need them are reported as skipped by the backend. Call stop when
// done.
func StartEmbedded() (b Backend, stop func(), err error) {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		return nil, nil, fmt.Errorf("sim: starting miniredis: %w", err)
	}
	return embedded{m}, m.Close, nil
}

// external is a server the simulation was pointed at and does not own.
type external string

// External is a Redis at addr that the simulation does not own: it is
// neither restarted nor flushed (those faults are skipped), and the
// simulation's keys carry a prefix of their own.
func External(addr string) Backend { return external(addr) }

func (e external) Name() string { return "redis at " + string(e) }
func (e external) Addr() string { return string(e) }
func (e external) Owned() bool  { return false }
func (e external) Restart() error {
	return fmt.Errorf("sim: will not restart a server it does not own: %w", errors.ErrUnsupported)
}

// ClusterBackend is a Backend that is a Redis Cluster: its nodes get a
// *redis.ClusterClient seeded with Seeds, the report counts reads and
// writes per shard, and the Failover and Reshard faults apply to it. Addr
// is one of the seeds. Restart restarts every member.
type ClusterBackend interface {
	Backend
	// Seeds are the addresses a cluster client starts from.
	Seeds() []string
	// KillMaster SIGKILLs the master listening on addr, which must serve
	// slots and have a replica; it fails, having killed nothing, if not.
	KillMaster(addr string) error
	// AwaitFailover waits until a replica of the master at addr, killed by
	// KillMaster, has taken its slots over and the cluster has settled,
	// and returns the promoted replica's address.
	AwaitFailover(ctx context.Context, addr string) (promoted string, err error)
	// Rejoin starts the member at addr again (empty) and waits until the
	// cluster has settled with it: a master whose slots were taken over
	// comes back as a replica of the promoted one.
	Rejoin(ctx context.Context, addr string) error
	// MigrateSlot moves slot, with its keys, from the master at from to
	// the master at to, and waits until every member agrees.
	MigrateSlot(ctx context.Context, slot int, from, to string) error
}

// errNotOwned is what a cluster the simulation does not own answers to a
// change of its topology.
var errNotOwned = fmt.Errorf("sim: will not change a cluster it does not own: %w", errors.ErrUnsupported)

// privateCluster is a Redis Cluster the simulation started.
type privateCluster struct{ c *redistest.LaunchedCluster }

// LaunchCluster starts a private Redis Cluster of three masters with one
// replica each (redis-server and redis-cli must be on PATH), every member
// with args appended to its command line. Call stop when done.
func LaunchCluster(args ...string) (b Backend, stop func(), err error) {
	ctx, cancel := context.WithTimeout(context.Background(), procWait)
	defer cancel()
	c, err := redistest.LaunchCluster(ctx, redistest.ClusterOptions{Args: args})
	if err != nil {
		return nil, nil, err
	}
	return privateCluster{c}, c.Stop, nil
}

func (p privateCluster) Name() string {
	return fmt.Sprintf("private Redis Cluster, 3 masters with 1 replica each: %s", strings.Join(p.c.Addrs(), " "))
}
func (p privateCluster) Addr() string    { return p.c.Addrs()[0] }
func (p privateCluster) Seeds() []string { return p.c.Addrs() }
func (p privateCluster) Owned() bool     { return true }

// Restart restarts every member without persistence: the cluster comes
// back with its roles and slots, and no key.
func (p privateCluster) Restart() error {
	ctx, cancel := context.WithTimeout(context.Background(), procWait)
	defer cancel()
	return p.c.RestartAll(ctx)
}

func (p privateCluster) KillMaster(addr string) error {
	s, err := p.c.Member(addr)
	if err != nil {
		return err
	}
	return p.c.KillMaster(s)
}

func (p privateCluster) AwaitFailover(ctx context.Context, addr string) (string, error) {
	s, err := p.c.Member(addr)
	if err != nil {
		return "", err
	}
	promoted, err := p.c.AwaitFailover(ctx, s)
	if err != nil {
		return "", err
	}
	return promoted.Addr(), nil
}

func (p privateCluster) Rejoin(ctx context.Context, addr string) error {
	s, err := p.c.Member(addr)
	if err != nil {
		return err
	}
	return p.c.RestartMember(ctx, s)
}

func (p privateCluster) MigrateSlot(ctx context.Context, slot int, from, to string) error {
	src, err := p.c.Member(from)
	if err != nil {
		return err
	}
	dst, err := p.c.Member(to)
	if err != nil {
		return err
	}
	return p.c.MigrateSlot(ctx, slot, src, dst)
}

// externalCluster is a cluster the simulation was pointed at and does not
// own.
type externalCluster []string

// ExternalCluster is a Redis Cluster reached through the seed addresses
// addrs, which the simulation does not own: it is neither restarted,
// flushed, failed over nor resharded (those faults are skipped), and the
// simulation's keys carry a prefix of their own.
func ExternalCluster(addrs []string) Backend { return externalCluster(addrs) }

func (e externalCluster) Name() string    { return "Redis Cluster at " + strings.Join(e, " ") }
func (e externalCluster) Addr() string    { return e[0] }
func (e externalCluster) Seeds() []string { return e }
func (e externalCluster) Owned() bool     { return false }
func (e externalCluster) Restart() error  { return errNotOwned }

func (e externalCluster) KillMaster(string) error { return errNotOwned }
func (e externalCluster) AwaitFailover(context.Context, string) (string, error) {
	return "", errNotOwned
}
func (e externalCluster) Rejoin(context.Context, string) error { return errNotOwned }
func (e externalCluster) MigrateSlot(context.Context, int, string, string) error {
	return errNotOwned
}
