package l2

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrUnexpectedReply reports a script reply of the wrong shape, which means
// the server is not running this package's scripts.
var ErrUnexpectedReply = errors.New("l2: unexpected reply")

// State is the outcome of [Store.ReadOrClaim].
type State int

const (
	// Hit: the value was present.
	Hit State = iota + 1
	// Claimed: the value was absent and the caller now holds the flag.
	Claimed
	// Busy: the value was absent and another claimant holds the flag.
	Busy
)

func (s State) String() string {
	switch s {
	case Hit:
		return "hit"
	case Claimed:
		return "claimed"
	case Busy:
		return "busy"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Read is the result of [Store.ReadOrClaim].
type Read struct {
	State State
	// Value is the stored envelope, for Hit.
	Value []byte
	// TTL is the value's remaining lifetime for Hit, or the flag's for Busy;
	// negative when the key has no expiry.
	TTL time.Duration
}

var (
	// KEYS: value, flag. ARGV: token, flag TTL in ms.
	readOrClaimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return {1, v, redis.call('PTTL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, '', 0} end
return {3, '', redis.call('PTTL', KEYS[2])}
`)
	// KEYS: value, flag. ARGV: token, envelope, TTL in ms.
	fillScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
`)
	// KEYS: flag. ARGV: token.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
	// KEYS: value. ARGV: bytes.
	deleteIfEqualScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
	// KEYS: the sequence counter if there is an announcement, then value
	// and flag of each change. ARGV: channel ('' for no announcement),
	// message head, message body, then per change 'd', or 's' followed by
	// envelope and TTL in ms.
	applyScript = redis.NewScript(`
local announce = ARGV[1] ~= ''
local k, a = 1, 4
if announce then k = 2 end
while k <= #KEYS do
  if ARGV[a] == 's' then
    redis.call('SET', KEYS[k], ARGV[a+1], 'PX', ARGV[a+2])
    redis.call('UNLINK', KEYS[k+1])
    a = a + 3
  else
    redis.call('UNLINK', KEYS[k], KEYS[k+1])
    a = a + 1
  end
  k = k + 2
end
if not announce then return 0 end
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. struct.pack('>I8', seq) .. ARGV[3])
return seq
`)
	scripts = []*redis.Script{readOrClaimScript, fillScript, releaseScript, deleteIfEqualScript, applyScript}
)

// Store runs the flag protocol against one Redis deployment. It is safe for
// concurrent use.
type Store struct {
	rdb redis.UniversalClient
}

// NewStore returns a Store over rdb: a single server, Sentinel, or Cluster
// client.
func NewStore(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb}
}

// LoadScripts loads the protocol's scripts into the server's script cache so
// that the first operations cost one round trip each. Scripts evicted later
// (SCRIPT FLUSH, a restart) are reloaded on demand: every script call falls
// back from EVALSHA to EVAL on NOSCRIPT (RACES.md R23).
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range scripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("l2 load scripts: %w", err)
		}
	}
	return nil
}

// ReadOrClaim reads k's value; if it is absent, it claims k's flag with
// token for flagTTL, all in one round trip.
func (s *Store) ReadOrClaim(ctx context.Context, k Keys, token string, flagTTL time.Duration) (Read, error) {
	if flagTTL <= 0 {
		return Read{}, fmt.Errorf("l2 read: %w", errNonPositiveTTL)
	}
	reply, err := readOrClaimScript.Run(ctx, s.rdb, []string{k.Value, k.Flag}, token, ttlMillis(flagTTL)).Slice()
	if err != nil {
		return Read{}, fmt.Errorf("l2 read: %w", err)
	}
	if len(reply) != 3 {
		return Read{}, fmt.Errorf("l2 read: %w: %d elements", ErrUnexpectedReply, len(reply))
	}
	state, ok1 := reply[0].(int64)
	value, ok2 := reply[1].(string)
	ttl, ok3 := reply[2].(int64)
	if !ok1 || !ok2 || !ok3 || state < int64(Hit) || state > int64(Busy) {
		return Read{}, fmt.Errorf("l2 read: %w: %v", ErrUnexpectedReply, reply)
	}
	r := Read{State: State(state), TTL: time.Duration(ttl) * time.Millisecond}
	if r.State == Hit {
		r.Value = []byte(value)
	}
	return r, nil
}

// Fill writes envelope as k's value with ttl if k's flag still holds token,
// and clears the flag, atomically. It reports whether the value was written:
// false means an invalidation, an expiry of the flag, or another claim came
// first (R01, R03, R04, R05).
func (s *Store) Fill(ctx context.Context, k Keys, token string, envelope []byte, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("l2 fill: %w", errNonPositiveTTL)
	}
	n, err := fillScript.Run(ctx, s.rdb, []string{k.Value, k.Flag}, token, envelope, ttlMillis(ttl)).Int64()
	if err != nil {
		return false, fmt.Errorf("l2 fill: %w", err)
	}
	return n == 1, nil
}

// Release clears k's flag if it still holds token, so that waiters need not
// wait for it to expire. A claimant whose fetch failed calls it.
func (s *Store) Release(ctx context.Context, k Keys, token string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{k.Flag}, token).Err(); err != nil {
		return fmt.Errorf("l2 release: %w", err)
	}
	return nil
}

// Write stores envelope as k's value with ttl and clears k's flag, in one
// atomic step, so that a fill in progress is refused as after an
// invalidation. It announces nothing: see Apply.
func (s *Store) Write(ctx context.Context, k Keys, envelope []byte, ttl time.Duration) error {
	_, err := s.Apply(ctx, []Change{{Keys: k, Write: true, Envelope: envelope, TTL: ttl}}, nil)
	return err
}

// Invalidate deletes the value and the flag of every key, in one atomic
// round trip. It announces nothing: see Apply.
func (s *Store) Invalidate(ctx context.Context, keys ...Keys) error {
	if len(keys) == 0 {
		return nil
	}
	changes := make([]Change, len(keys))
	for i, k := range keys {
		changes[i] = Change{Keys: k}
	}
	_, err := s.Apply(ctx, changes, nil)
	return err
}

// Change is one key's part of [Store.Apply]: delete its value and flag, or,
// with Write, store Envelope for TTL and delete its flag.
type Change struct {
	Keys     Keys
	Write    bool
	Envelope []byte
	TTL      time.Duration
}

// Announcement is the message that [Store.Apply] publishes on Channel: Head,
// then the 8-byte big-endian sequence number drawn from SeqKey, then Body.
type Announcement struct {
	SeqKey  string
	Channel string
	Head    []byte
	Body    []byte
}

// Apply makes every change and, if a is not nil, draws the next sequence
// number and publishes the announcement, in one atomic step and one round
// trip: a receiver of the message can never read a value that the message
// says is gone (RACES.md R14). Deleting a key's flag with its value refuses
// any fill in progress (R01). It returns the sequence number (0 without an
// announcement). All keys must live on one server: SeqKey is not
// hash-tagged with the changes.
func (s *Store) Apply(ctx context.Context, changes []Change, a *Announcement) (uint64, error) {
	keys := make([]string, 0, 1+2*len(changes))
	args := make([]any, 0, 3+3*len(changes))
	if a != nil {
		if a.Channel == "" || a.SeqKey == "" {
			return 0, errors.New("l2 apply: an announcement needs a channel and a sequence key")
		}
		keys = append(keys, a.SeqKey)
		args = append(args, a.Channel, a.Head, a.Body)
	} else {
		args = append(args, "", "", "")
	}
	for _, c := range changes {
		keys = append(keys, c.Keys.Value, c.Keys.Flag)
		if c.Write {
			if c.TTL <= 0 {
				return 0, fmt.Errorf("l2 apply: %w", errNonPositiveTTL)
			}
			args = append(args, "s", c.Envelope, ttlMillis(c.TTL))
		} else {
			args = append(args, "d")
		}
	}
	seq, err := applyScript.Run(ctx, s.rdb, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("l2 apply: %w", err)
	}
	return uint64(seq), nil
}

// DeleteIfEqual deletes k's value if it still holds exactly b: it removes a
// corrupt entry without racing a good value written meanwhile.
func (s *Store) DeleteIfEqual(ctx context.Context, k Keys, b []byte) error {
	if err := deleteIfEqualScript.Run(ctx, s.rdb, []string{k.Value}, b).Err(); err != nil {
		return fmt.Errorf("l2 delete corrupt: %w", err)
	}
	return nil
}

// errNonPositiveTTL reports a lifetime that Redis cannot express.
var errNonPositiveTTL = errors.New("l2: a TTL must be positive")

// ttlMillis rounds a positive duration up to whole milliseconds: PX 0 is an
// error in Redis, and rounding down would shorten the lifetime.
func ttlMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
