package l2

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/redis/go-redis/v9"
)

// A resource is one data set stored whole: its encoding split into chunks
// (so that no Redis value is too large to move), named by a version, and a
// meta key that says which version is current. Its keys share one hash
// slot ({name}):
//
//	<prefix>:r:{<name>}:m            meta: the current version (see ResourceMeta)
//	<prefix>:r:{<name>}:n            "fresh" marker, living ReloadEvery from the store
//	<prefix>:r:{<name>}:f            the loader's claim ("!" + token: its load failed)
//	<prefix>:r:{<name>}:c:<ver>:<i>  chunk i of version ver
//
// A store writes the new version's chunks first, then switches the meta in
// one script fenced by the claim, then deletes the old version's chunks: a
// reader holding the old meta finds a chunk missing and reads the meta
// again (ErrResourceMoved).

// ResourceKeys are the Redis names of one resource.
type ResourceKeys struct {
	Meta, Fresh, Flag string
	chunk             string // prefix of the chunk names
}

// ResourceKeysFor returns the names of resource name under prefix.
func ResourceKeysFor(prefix, name string) ResourceKeys {
	base := prefix + ":r:{" + name + "}:"
	return ResourceKeys{Meta: base + "m", Fresh: base + "n", Flag: base + "f", chunk: base + "c:"}
}

// Chunk returns the name of chunk i of version.
func (k ResourceKeys) Chunk(version string, i int) string {
	return k.chunk + version + ":" + strconv.Itoa(i)
}

// ResourceMeta describes one stored version of a resource: its chunks and
// the length and xxhash64 of their concatenation. Its encoding is
// "1:<version>:<chunks>:<bytes>:<sum in hex>".
type ResourceMeta struct {
	Version string
	Chunks  int
	Bytes   int
	Sum     uint64
}

// ErrBadResourceMeta reports a meta value that does not parse.
var ErrBadResourceMeta = errors.New("l2: malformed resource meta")

// maxResourceChunks bounds the chunks of a version a meta may name.
const maxResourceChunks = 1 << 20

// Encode returns m's stored form.
func (m ResourceMeta) Encode() string {
	return "1:" + m.Version + ":" + strconv.Itoa(m.Chunks) + ":" + strconv.Itoa(m.Bytes) + ":" + strconv.FormatUint(m.Sum, 16)
}

// ParseResourceMeta parses a stored meta. Any error wraps
// ErrBadResourceMeta; it never panics.
func ParseResourceMeta(s string) (ResourceMeta, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 5 || parts[0] != "1" {
		return ResourceMeta{}, fmt.Errorf("%w: %q", ErrBadResourceMeta, truncate(s))
	}
	m := ResourceMeta{Version: parts[1]}
	var err error
	if m.Chunks, err = strconv.Atoi(parts[2]); err != nil || m.Chunks < 0 || m.Chunks > maxResourceChunks {
		return ResourceMeta{}, fmt.Errorf("%w: chunk count %q", ErrBadResourceMeta, truncate(parts[2]))
	}
	if m.Bytes, err = strconv.Atoi(parts[3]); err != nil || m.Bytes < 0 {
		return ResourceMeta{}, fmt.Errorf("%w: length %q", ErrBadResourceMeta, truncate(parts[3]))
	}
	if m.Sum, err = strconv.ParseUint(parts[4], 16, 64); err != nil {
		return ResourceMeta{}, fmt.Errorf("%w: checksum %q", ErrBadResourceMeta, truncate(parts[4]))
	}
	if m.Version == "" || (m.Chunks == 0) != (m.Bytes == 0) {
		return ResourceMeta{}, fmt.Errorf("%w: %q", ErrBadResourceMeta, truncate(s))
	}
	return m, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ResourceState is what Redis holds for a resource.
type ResourceState struct {
	// Meta is the current version; Present is false if there is none (or
	// it did not parse, which Err then says).
	Meta    ResourceMeta
	Present bool
	Err     error
	// Fresh is true while the version is younger than its reload period.
	Fresh bool
	// Claimed is true while a node loads it (or its load failed lately).
	Claimed bool
}

// ReadResourceState reads a resource's meta, fresh marker and claim in one
// round trip.
func (s *Store) ReadResourceState(ctx context.Context, k ResourceKeys) (ResourceState, error) {
	var st ResourceState
	err := s.do(ctx, func(ctx context.Context) error {
		p := s.rdb.Pipeline()
		meta := p.Get(ctx, k.Meta)
		fresh := p.Exists(ctx, k.Fresh)
		flag := p.Exists(ctx, k.Flag)
		_, err := p.Exec(ctx)
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		st.Fresh, st.Claimed = fresh.Val() == 1, flag.Val() == 1
		if v, err := meta.Result(); err == nil {
			st.Meta, st.Err = ParseResourceMeta(v)
			st.Present = st.Err == nil
		}
		return nil
	})
	return st, err
}

// ErrResourceMoved reports a version whose chunks are gone or do not match
// its meta: a newer version replaced it during the read, or Redis evicted
// part of it. Read the state again.
var ErrResourceMoved = errors.New("l2: resource version no longer stored whole")

// ReadResource returns the bytes of version m, in one round trip.
func (s *Store) ReadResource(ctx context.Context, k ResourceKeys, m ResourceMeta) ([]byte, error) {
	var out []byte
	err := s.do(ctx, func(ctx context.Context) error {
		if m.Chunks == 0 {
			return nil
		}
		p := s.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, m.Chunks)
		for i := range cmds {
			cmds[i] = p.Get(ctx, k.Chunk(m.Version, i))
		}
		if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		out = make([]byte, 0, m.Bytes)
		for _, c := range cmds {
			b, err := c.Bytes()
			if errors.Is(err, redis.Nil) {
				return ErrResourceMoved
			}
			if err != nil {
				return err
			}
			out = append(out, b...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) != m.Bytes || xxhash.Sum64(out) != m.Sum {
		return nil, ErrResourceMoved
	}
	return out, nil
}

// ClaimResource takes the right to load a resource for ttl, unless another
// node holds it (or marked its load failing): one loader for the fleet.
func (s *Store) ClaimResource(ctx context.Context, k ResourceKeys, token string, ttl time.Duration) (bool, error) {
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		ok, err = s.rdb.SetNX(ctx, k.Flag, token, ttl).Result()
		return err
	})
	return ok, err
}

// ReleaseResource gives up a claim, or marks it failing for throttle so
// that the fleet leaves the source alone a while (throttle > 0).
func (s *Store) ReleaseResource(ctx context.Context, k ResourceKeys, token string, throttle time.Duration) error {
	return s.do(ctx, func(ctx context.Context) error {
		return releaseResourceScript.Run(ctx, s.rdb, []string{k.Flag}, token, ttlMillis(throttle)).Err()
	})
}

// ExpireResource ends a resource's freshness: the next check of any node
// loads it again.
func (s *Store) ExpireResource(ctx context.Context, k ResourceKeys) error {
	return s.do(ctx, func(ctx context.Context) error { return s.rdb.Del(ctx, k.Fresh).Err() })
}

// StoreResource stores data as the resource's new version under the claim
// token: chunks of at most chunkBytes, living ttl (0: no expiry), fresh for
// reloadEvery. It returns the new meta and false if the claim was lost
// meanwhile (the version is then discarded). The claim ends either way.
func (s *Store) StoreResource(ctx context.Context, k ResourceKeys, token string, data []byte, chunkBytes int, ttl, reloadEvery time.Duration) (ResourceMeta, bool, error) {
	m := ResourceMeta{Version: token, Bytes: len(data), Sum: xxhash.Sum64(data)}
	m.Chunks = (len(data) + chunkBytes - 1) / chunkBytes
	if m.Chunks > maxResourceChunks {
		return m, false, fmt.Errorf("l2 store resource: %d chunks, limit %d", m.Chunks, maxResourceChunks)
	}
	var stored bool
	err := s.do(ctx, func(ctx context.Context) error {
		p := s.rdb.Pipeline()
		for i := range m.Chunks {
			p.Set(ctx, k.Chunk(m.Version, i), data[i*chunkBytes:min((i+1)*chunkBytes, len(data))], ttl)
		}
		args := []any{token, m.Encode(), ttlMillis(ttl), ttlMillis(reloadEvery)}
		p.EvalSha(ctx, storeResourceScript.Hash(), []string{k.Flag, k.Meta, k.Fresh}, args...)
		cmds, err := p.Exec(ctx)
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			// The script was flushed: load it and switch again.
			var res any
			res, err = storeResourceScript.Run(ctx, s.rdb, []string{k.Flag, k.Meta, k.Fresh}, args...).Result()
			return s.afterStore(ctx, k, m, res, err, &stored)
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		res, err := cmds[len(cmds)-1].(*redis.Cmd).Result()
		return s.afterStore(ctx, k, m, res, err, &stored)
	})
	return m, stored, err
}

// afterStore reads the store script's answer (the old meta, "" if none,
// or nil if the claim was lost) and deletes the chunks that the switch
// left unused: the old version's, or the new one's if the claim was lost.
func (s *Store) afterStore(ctx context.Context, k ResourceKeys, m ResourceMeta, res any, err error, stored *bool) error {
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	unused := m
	if old, ok := res.(string); ok {
		*stored = true
		if unused, err = ParseResourceMeta(old); err != nil {
			return nil // nothing (readable) to delete
		}
	}
	if unused.Chunks == 0 {
		return nil
	}
	names := make([]string, unused.Chunks)
	for i := range names {
		names[i] = k.Chunk(unused.Version, i)
	}
	return s.rdb.Unlink(ctx, names...).Err()
}

var (
	// KEYS: flag, meta, fresh. ARGV: token, meta, TTL in ms (0: none),
	// fresh period in ms. Returns the old meta ("" if none), or nil if the
	// claim is not the token's.
	storeResourceScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local old = redis.call('GET', KEYS[2]) or ''
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
redis.call('DEL', KEYS[1])
return old
`)
	// KEYS: flag. ARGV: token, throttle in ms (0: release).
	releaseResourceScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], '!' .. ARGV[1], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
`)
)
