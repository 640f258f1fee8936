package pgnotify

import "time"

// NewWithHooks is New with the test-only event points: counted runs after
// any counter of Stats changed, idle when the connection has been silent
// for PingInterval, before the ping, and backoff before each wait between
// attempts, with its length.
func NewWithHooks(cfg Config, counted, idle func(), backoff func(time.Duration)) (*Listener, error) {
	return newListener(cfg, hooks{counted: counted, idle: idle, backoff: backoff})
}

// Backoff is the wait before the next attempt after failures failed ones.
func (l *Listener) Backoff(failures int) time.Duration { return l.backoff(failures) }
