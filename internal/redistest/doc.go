// Package redistest starts private redis-server processes for tests.
//
// Tests in this repository must never depend on a shared or system Redis
// (such as one listening on 127.0.0.1:6379). Instead, each test calls
// [Start], which launches a fresh redis-server on a free 127.0.0.1 port with
// persistence disabled and its working directory and log file in
// t.TempDir(). The returned [Server] is private to that one test: the test may
// kill, restart, flush, pause or reconfigure it without affecting any other
// test, and it is stopped and reaped automatically by t.Cleanup.
//
// The package needs the redis-server binary on PATH (on Debian and Ubuntu:
// the redis-server package, "apt-get install -y redis-server"). If the binary
// is missing, [Start] fails the test with t.Fatalf; it never calls t.Skip, so
// a missing Redis can not silently turn tests into no-ops.
//
// Failures inside this package are reported with t.Fatalf on the testing.TB
// given to [Start] (or to [Server.Client]); like any t.Fatalf, that only works
// as intended from the test's own goroutine. The methods themselves are safe
// to call from any goroutine.
package redistest
