// Package peers benchmarks tiercache beside its peers, go-redis/cache and
// rueidis's client-side caching, against one private redis-server in the
// same run. It has no API: everything is in its _test.go files, and it is
// a module of its own so that the peers never become dependencies of
// tiercache.
package peers
