// Package redistest starts private redis-server processes for tests: a
// single server, a Redis Cluster, or a Sentinel deployment.
//
// Tests in this repository must never depend on a shared or system Redis
// (such as one listening on 127.0.0.1:6379). Instead, each test calls
// [Start], which launches a fresh redis-server on a free 127.0.0.1 port with
// persistence disabled and its working directory and log file in
// t.TempDir(). The returned [Server] is private to that one test: the test may
// kill, restart, flush, pause or reconfigure it without affecting any other
// test, and it is stopped and reaped automatically by t.Cleanup.
//
// [StartCluster] starts a Redis Cluster the same way: every member is a
// [Server] of its own (cluster mode, its nodes.conf in its own directory, a
// free cluster bus port, a short --cluster-node-timeout), joined with
// redis-cli --cluster create. [StartSentinel] starts a master, its replica
// and three sentinels, each sentinel a [Server] running with --sentinel and
// a config file of its own. Both return only once the deployment has
// settled, so a test can rely on what it asks for: for a cluster, every
// slot served, every member agreeing on who serves it, every replica's link
// up; for sentinels, every sentinel knowing the master, the replica and the
// other sentinels. Their methods kill masters, wait for failovers, swap
// roles and move slots, and each wait polls the real state of the processes
// until it is reached or a deadline (a minute, generous for a loaded
// machine) passes; none sleeps to let things settle. Roles are always asked
// from the cluster or the sentinels, never cached, because failovers change
// them.
//
// Outside tests, where no testing.TB exists (TestMain, the simulation's
// command), [Launch] starts a server and [LaunchCluster] a cluster; they
// and their methods return errors instead of failing a test, through the
// same code as [Start] and [StartCluster], and the caller stops what they
// started ([Server.Stop], [LaunchedCluster.Stop]).
//
// Every process a test starts, in any of these forms, is killed with
// SIGKILL and reaped by t.Cleanup, and on Linux the kernel kills it too if
// the test binary dies without running its cleanups. Clients the package
// hands out ([Server.Client], [Cluster.Client], [Sentinel.FailoverClient])
// are closed by t.Cleanup as well.
//
// The package needs the redis-server binary on PATH (on Debian and Ubuntu:
// the redis-server package, "apt-get install -y redis-server"), and for a
// cluster redis-cli as well (the redis-tools package, "apt-get install -y
// redis-tools", which redis-server depends on). If a binary is missing,
// [Start], [StartCluster] and [StartSentinel] fail the test with t.Fatalf and
// the install command; they never call t.Skip, so a missing Redis can not
// silently turn tests into no-ops.
//
// Failures are reported with t.Fatalf on the testing.TB given to [Start],
// [StartCluster] or [StartSentinel], or on the one a method takes. A
// failure says what was awaited or which command failed on which address,
// and shows what the processes say: the tail of a server's log when it does
// not come up; each member's CLUSTER NODES and log tail when a cluster does
// not settle; what each sentinel knows and every log tail when a sentinel
// deployment does not. Like any t.Fatalf, that only works as intended from
// the test's own goroutine. The methods themselves are safe to call from any
// goroutine.
package redistest
