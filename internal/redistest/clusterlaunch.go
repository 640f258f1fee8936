package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
)

// LaunchedCluster is a private Redis Cluster started outside any test by
// [LaunchCluster], for the simulation's command: the part of [Cluster] it
// needs, each method returning its failure (and each wait taking a
// context) instead of failing a test. The logic is Cluster's own. Its
// members are Servers made as by [Launch]: use [Server.Relaunch] and
// [Server.Kill] on them, not the methods that report through a test. The
// methods are safe for concurrent use; the caller must call Stop before
// the process exits.
type LaunchedCluster struct {
	*cluster
}

// LaunchCluster is [StartCluster] outside any test: it starts a cluster
// as opts says and returns once it has settled, or an error (naming the
// install command when redis-server or redis-cli is missing). On error,
// whatever it started is stopped.
func LaunchCluster(ctx context.Context, opts ClusterOptions) (*LaunchedCluster, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redistest: redis-server not found on PATH (%w); install it with: %s", err, installHint)
	}
	c := &LaunchedCluster{newCluster()}
	if err := c.join(ctx, opts, launch); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Stop kills every member for good and removes their directories. It is
// idempotent.
func (c *LaunchedCluster) Stop() {
	for _, m := range c.members {
		m.srv.Stop()
	}
	c.closeAdmins()
}

// Masters returns the members the cluster currently sees as masters, as
// [Cluster.Masters] does.
func (c *LaunchedCluster) Masters() ([]*Server, error) { return c.masters() }

// MasterOfSlot returns the member that currently serves slot as master, as
// [Cluster.MasterOfSlot] does.
func (c *LaunchedCluster) MasterOfSlot(slot int) (*Server, error) { return c.masterOfSlot(slot) }

// Member returns the member listening on addr ("127.0.0.1:PORT").
func (c *LaunchedCluster) Member(addr string) (*Server, error) {
	m := c.byAddr[addr]
	if m == nil {
		return nil, fmt.Errorf("redistest: no member of the cluster listens on %s", addr)
	}
	return m.srv, nil
}

// KillMaster SIGKILLs master, which must currently be a master serving
// slots and having a replica, as [Cluster.KillMaster] does.
func (c *LaunchedCluster) KillMaster(master *Server) error {
	return c.downMaster("KillMaster", master, master.Kill)
}

// AwaitFailover waits until a replica of old has taken its slots over and
// the cluster has settled, as [Cluster.AwaitFailover] does, and returns
// the promoted replica.
func (c *LaunchedCluster) AwaitFailover(ctx context.Context, old *Server) (*Server, error) {
	return c.awaitFailover(ctx, old)
}

// RestartMember restarts a member, empty, and waits until the cluster has
// settled with it, as [Cluster.RestartMember] does.
func (c *LaunchedCluster) RestartMember(ctx context.Context, s *Server) error {
	return c.restartMember(ctx, s)
}

// MigrateSlot moves slot with its keys from master from to master to, as
// [Cluster.MigrateSlot] does.
func (c *LaunchedCluster) MigrateSlot(ctx context.Context, slot int, from, to *Server) error {
	return c.migrateSlot(ctx, slot, from, to)
}

// AwaitSettled waits until the cluster has settled, as
// [Cluster.AwaitSettled] does.
func (c *LaunchedCluster) AwaitSettled(ctx context.Context) error { return c.awaitSettled(ctx) }

// RestartAll restarts the whole cluster without persistence: it kills
// every member, starts each again (empty, with its node ID, role and slots
// from nodes.conf, as [Cluster.RestartMember] does one), and waits until
// the cluster has settled. Every key is gone; the roles are as before.
func (c *LaunchedCluster) RestartAll(ctx context.Context) error {
	for _, m := range c.members {
		m.srv.Kill() // all first: no replica outlives its master with data to serve
	}
	var errs []error
	for _, m := range c.members {
		errs = append(errs, m.srv.Relaunch())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.awaitSettled(ctx)
}
