package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// Value is what the simulation caches: the key it belongs to and the
// version of the source it was read at, so that every read's version is
// known. Pad only makes values bigger.
type Value struct {
	Key     int
	Version int64
	Pad     []byte `cbor:",omitempty"`
}

// errFetch is the error of a fetch that the fetch-error fault failed.
var errFetch = errors.New("sim: source unavailable (injected)")

// source is the source of truth: one version per key, incremented by every
// write. Every fetch is counted with its time, for the herd factor and the
// plot of source reads.
type source struct {
	versions []atomic.Int64
	latency  Latency
	pad      []byte
	clock    *clock
	flagTTL  time.Duration
	absent   bool // version 0 is "not found" (Config.Absent)

	slow atomic.Bool // the slow-fetch fault is on
	fail atomic.Bool // the fetch-error fault is on
	rng  sync.Mutex  // guards r
	r    *rand.Rand

	mu      sync.Mutex
	fetches []int64 // clock readings of every fetch
}

func newSource(cfg Config, c *clock) *source {
	return &source{
		versions: make([]atomic.Int64, cfg.keySpace()),
		latency:  cfg.FetchLatency,
		pad:      make([]byte, cfg.ValueBytes),
		clock:    c,
		flagTTL:  cfg.FlagTTL,
		absent:   cfg.Absent,
		r:        rand.New(rand.NewPCG(uint64(cfg.Seed), 0xfe7c4)),
	}
}

// bump records a write of key in the source and returns its new version.
func (s *source) bump(key int) int64 { return s.versions[key].Add(1) }

// fetch reads key's current version, then takes its latency: a slow fetch
// returns an old version late, as a slow database read would. A key that
// is absent (Config.Absent, version 0) is not found.
func (s *source) fetch(ctx context.Context, key int) (Value, error) {
	v := s.read(key)
	if err := s.wait(ctx); err != nil {
		return Value{}, err
	}
	if v.Version == 0 && s.absent {
		return Value{}, fmt.Errorf("sim: key %d: %w", key, tier.ErrNotFound)
	}
	return v, nil
}

// fetchMany is fetch for many keys in one source read (Config.FetchMany):
// one latency, one roll of the faults; absent keys are left out.
func (s *source) fetchMany(ctx context.Context, keys []int) (map[int]Value, error) {
	vs := make([]Value, len(keys))
	for i, k := range keys {
		vs[i] = s.read(k)
	}
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	out := make(map[int]Value, len(keys))
	for _, v := range vs {
		if v.Version > 0 || !s.absent {
			out[v.Key] = v
		}
	}
	return out, nil
}

// read counts one source read of key and returns its current version.
func (s *source) read(key int) Value {
	now := s.clock.now()
	s.mu.Lock()
	s.fetches = append(s.fetches, now)
	s.mu.Unlock()
	return Value{Key: key, Version: s.versions[key].Load(), Pad: s.pad}
}

// wait takes one fetch's latency after its read, or fails it, as the
// fetch-error and slow-fetch faults say.
func (s *source) wait(ctx context.Context) error {
	s.rng.Lock()
	d := s.latency.Min
	if s.latency.Max > s.latency.Min {
		d += time.Duration(s.r.Int64N(int64(s.latency.Max - s.latency.Min + 1)))
	}
	roll := s.r.IntN(12)
	s.rng.Unlock()
	if s.fail.Load() && roll%3 == 0 {
		return errFetch
	}
	if s.slow.Load() && roll%4 == 0 {
		d = s.flagTTL * 3 / 2 // outlasts the claim: its fill must be refused (R04)
	}
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// fetchTimes returns the clock readings of every fetch so far.
func (s *source) fetchTimes() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.fetches...)
}
