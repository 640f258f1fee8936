// Package safelog keeps a caller's slog.Handler from ending the goroutine
// that logs through it.
//
// Guarantee: a logger made by New never panics because its handler did.
// A handler that panics in Enabled, Handle, WithAttrs or WithGroup loses
// the record (or the attributes, or the group) it was given, and nothing
// else: the caller goes on, and the panic is reported to the onPanic
// function New was given, so that it can be counted. A handler that calls
// runtime.Goexit is not stopped: that is not a panic, and no deferred
// recover sees it.
package safelog
