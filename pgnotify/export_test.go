package pgnotify

// NewWithHooks is New with the test-only event points: counted runs after
// any counter of Stats changed, idle when the connection has been silent
// for PingInterval, before the ping.
func NewWithHooks(cfg Config, counted, idle func()) (*Listener, error) {
	return newListener(cfg, hooks{counted: counted, idle: idle})
}
