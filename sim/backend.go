package sim

import (
	"errors"
	"fmt"

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
