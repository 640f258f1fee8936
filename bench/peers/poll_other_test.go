//go:build !linux

package peers

import "runtime"

// poller paces the reads of a freshness round. Outside Linux it only
// yields the processor between two reads: a reader that spins like this
// delays the delivery it waits for (see the Linux poller), so the
// freshness figures of such a run are not comparable to Linux ones.
type poller struct{}

func newPoller() *poller { return &poller{} }

func (*poller) pause() { runtime.Gosched() }

func (*poller) stop() {}
