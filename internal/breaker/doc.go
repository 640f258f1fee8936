// Package breaker is a node's circuit breaker for Redis: after a run of
// consecutive failures it opens, and operations fail at once instead of
// each waiting for a timeout; after a pause it lets one probe through, and
// closes again when a probe succeeds.
//
// Guarantee: while open, Allow admits nothing until OpenFor has passed;
// then it admits exactly one probe at a time until one succeeds. The clock
// is injected, so tests drive it without sleeping. Safe for concurrent use.
package breaker
