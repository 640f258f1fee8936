package l2

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
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
	// StaleClaimed: the value was present but due for a refresh (see
	// Claim), and the caller now holds the flag.
	StaleClaimed
	// StaleBusy: the value was present but due for a refresh, and another
	// claimant holds the flag.
	StaleBusy
)

func (s State) String() string {
	switch s {
	case Hit:
		return "hit"
	case Claimed:
		return "claimed"
	case Busy:
		return "busy"
	case StaleClaimed:
		return "stale-claimed"
	case StaleBusy:
		return "stale-busy"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Read is the result of [Store.ReadOrClaim].
type Read struct {
	State State
	// Value is the stored envelope, for Hit, StaleClaimed and StaleBusy.
	// Read-only: from Peek, it is the bytes of the reply's string, not a
	// copy; copy it to keep it past a change.
	Value []byte
	// TTL is the value's remaining lifetime when there is a value, or the
	// flag's for Busy; negative when the key has no expiry.
	TTL time.Duration
	// Groups are the groups the value was filled in, when there is a value.
	Groups []string
	// Negative reports a stored "not found" (see Entry.Negative); Value is
	// then meaningless.
	Negative bool
	// Failing reports, for Busy and StaleBusy, that the flag is a failure
	// mark (see MarkFailing) rather than a claim in progress.
	Failing bool
	// Clock is the group clock when the claim was made, for Claimed and
	// StaleClaimed: pass it to FillInGroups or FillEntry, which refuse the
	// fill if any of its groups changed since (R31) or the clock itself was
	// lost (R36). Opaque.
	Clock string
	// Stale reports that a value was present but one of its groups had been
	// invalidated (or its stamp had vanished) since it was filled: the value
	// was removed, and the read went on as a miss (docs/RACES.md R31, R26).
	Stale bool
}

var (
	// KEYS: value, flag, meta, group clock. ARGV: token, flag TTL in ms,
	// prefix, the remaining lifetime in ms at or below which a present value
	// is claimed for a refresh (-1: never), '1' to claim a present value
	// regardless, slot tag ('' outside a cluster). Reply, with a value:
	// state, value, TTL, group names, group clock (for a claim),
	// removed-stale, failing, negative. Without one (Claimed, Busy), one
	// string (parseBrief): a table costs the script more than its commands.
	readOrClaimScript = redis.NewScript(gclockLua + headerLua + `
names(ARGV[3], ARGV[6])
-- A reader that finds the flag held may wait: the flag's holder, when it
-- fills, releases or fails, announces it on the wake channel (see wakeLua).
local function waiting()
  redis.call('SET', KEYS[2] .. 'w', '1', 'PX', ARGV[2])
end
local function failing(f)
  if f and string.sub(f, 1, 1) == '!' then return 1 end
  return 0
end
local v = redis.call('GET', KEYS[1])
local stale = 0
if v then
  -- The value's header names its groups with their stamps (value.go). A
  -- value without one was written by an earlier version, with its groups
  -- in the meta list, which starts with the marker '1' ('n' for a stored
  -- "not found"): one without the marker lost its meta (evicted under
  -- maxmemory), so its groups are unknown, never assumed fresh (R26).
  local marker, m = unheader(v)
  if not marker then
    m = redis.call('LRANGE', KEYS[3], 0, -1)
    marker = table.remove(m, 1)
  end
  local ok = marker == '1' or marker == 'n'
  for i = 1, #m, 2 do
    if redis.call('GET', skey(m[i])) ~= m[i+1] then
      ok = false
      break
    end
  end
  if ok then
    local names = {}
    for i = 1, #m, 2 do names[#names + 1] = m[i] end
    local neg = 0
    if marker == 'n' then neg = 1 end
    local left = redis.call('PTTL', KEYS[1])
    local below = tonumber(ARGV[4])
    -- A stored "not found" has no refresh zone: it lives its short TTL.
    if ARGV[5] ~= '1' and (neg == 1 or below < 0 or left < 0 or left > below) then
      return {1, v, left, names, '', 0, 0, neg}
    end
    if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
      return {4, v, left, names, gclock(ARGV[1]), 0, 0, neg}
    end
    waiting()
    return {5, v, left, names, '', 0, failing(redis.call('GET', KEYS[2])), neg}
  end
  redis.call('UNLINK', KEYS[1], KEYS[3])
  stale = 1
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return '2' .. stale .. gclock(ARGV[1])
end
waiting()
return '3' .. stale .. failing(redis.call('GET', KEYS[2])) .. string.format('%d', redis.call('PTTL', KEYS[2]))
`)
	// KEYS: value, flag, meta, group clock. ARGV: token, envelope, TTL in
	// ms, the group clock of the claim, prefix, meta marker ('1', or 'n' for
	// "not found"), slot tag ('' outside a cluster), wake channel, group
	// count n, n names, n fresh tokens.
	fillScript = redis.NewScript(stampLua + headerLua + wakeLua + `
names(ARGV[5], ARGV[7])
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
local meta = stamps(ARGV, 9, ARGV[4], ttl)
if not meta then
  -- The flag is ours (checked above): give it up, so that the next reader
  -- claims at once instead of waiting for it to expire.
  redis.call('DEL', KEYS[2])
  wake(KEYS[2], ARGV[8], KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], header(ARGV[6], ttl, meta) .. ARGV[2], 'PX', string.format('%d', ttl))
redis.call('DEL', KEYS[2], KEYS[3])
wake(KEYS[2], ARGV[8], KEYS[1])
return 1
`)
	// KEYS: flag, value. ARGV: token, wake channel.
	releaseScript = redis.NewScript(wakeLua + `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  wake(KEYS[1], ARGV[2], KEYS[2])
  return 1
end
return 0
`)
	// KEYS: flag, value. ARGV: token, mark TTL in ms, wake channel.
	markFailingScript = redis.NewScript(wakeLua + `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '!' .. ARGV[1], 'PX', ARGV[2])
  wake(KEYS[1], ARGV[3], KEYS[2])
  return 1
end
return 0
`)
	// KEYS: value. ARGV: bytes.
	deleteIfEqualScript = redis.NewScript(headerLua + `
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local marker, _, at = unheader(v)
if v == ARGV[1] or (marker and string.sub(v, at) == ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
`)
	// KEYS: the anchor (the sequence counter if there is an announcement,
	// else the group clock), then value, flag and meta of each key change.
	// ARGV: channel ('' for no announcement), message head, message body,
	// prefix, slot tag ('' outside a cluster), the publish command ('PUBLISH'
	// or 'SPUBLISH'), then per change 'd'; or 's', envelope, TTL in ms,
	// late-after (µs on Redis's clock, 0: never), the TTL in ms of a late
	// write, group count n, n names, n fresh tokens; or 'g', group, fresh
	// token, stamp TTL in ms; or 'x', the same as 'g' but replacing the
	// group's stamp only where it exists (a cluster slot's, see doc.go).
	applyScript = redis.NewScript(stampLua + headerLua + announceLua + `
local announcing = ARGV[1] ~= ''
names(ARGV[4], ARGV[5])
local k, a = 2, 7
while a <= #ARGV do
  local op = ARGV[a]
  if op == 'g' or op == 'x' then
    local clock = tick(ARGV[a+2])
    local sk = skey(ARGV[a+1])
    if op == 'g' or redis.call('EXISTS', sk) == 1 then
      redis.call('SET', sk, clock .. ':' .. ARGV[a+2], 'PX', ARGV[a+3])
    end
    a = a + 4
  elseif op == 's' then
    local ttl = tonumber(ARGV[a+2])
    local late = tonumber(ARGV[a+3])
    if late > 0 then
      -- Running after its caller gave up (R44): a newer write may already
      -- have landed; live no longer than that write's bound.
      if now() > late then
        ttl = math.min(ttl, tonumber(ARGV[a+4]))
      end
    end
    local n = tonumber(ARGV[a+5])
    local meta = stamps(ARGV, a + 5, nil, ttl)
    redis.call('SET', KEYS[k], header('1', ttl, meta) .. ARGV[a+1], 'PX', string.format('%d', ttl))
    redis.call('UNLINK', KEYS[k+1], KEYS[k+2], KEYS[k+1] .. 'w')
    a = a + 6 + 2 * n
    k = k + 3
  else
    redis.call('UNLINK', KEYS[k], KEYS[k+1], KEYS[k+2], KEYS[k+1] .. 'w')
    a = a + 1
    k = k + 3
  end
end
if not announcing then return 0 end
return announce(now())
`)
	// KEYS and ARGV: as applyScript's, for changes that all delete ('d').
	// Apply runs it instead of applyScript for a batch whose changes all
	// delete keys (on a cluster, for the key changes of a batch, its group
	// invalidations running apart), and for a cluster's announcement: it
	// leaves out the helpers that only writes and groups need, which each
	// run of a script would define again.
	deleteScript = redis.NewScript(nowLua + announceLua + `
for a = 7, #ARGV do
  if ARGV[a] ~= 'd' then return redis.error_reply('l2 delete script: change ' .. ARGV[a]) end
end
local k = 2
for a = 7, #ARGV do
  redis.call('UNLINK', KEYS[k], KEYS[k+1], KEYS[k+2], KEYS[k+1] .. 'w')
  k = k + 3
end
if ARGV[1] == '' then return 0 end
return announce(now())
`)
	// KEYS: the sequence counter, then value, flag and meta of one key, then
	// the stamps of its n groups. ARGV: channel, message head, message body,
	// envelope, TTL in ms, the publish command ('PUBLISH'), late-after and
	// the TTL in ms of a late write (as applyScript's 's'), then each
	// group's name as the header writes it, "<length>:<name>".
	//
	// Apply runs it instead of applyScript for a batch of one write on one
	// server (without WithWaitReplicas), the common Set: it makes the same
	// write, keep-alive and announcement (keep them in step with stampLua,
	// headerLua and applyScript's 's'), with the stamps' names declared
	// rather than built, and without the helpers, the op codes and the
	// group clock that only other changes need. If a stamp is missing (the
	// group's first write, or its stamp was evicted), it changes nothing
	// and returns -1, and Apply runs applyScript, which creates the stamp
	// from the group clock (R36).
	writeScript = redis.NewScript(nowLua + announceLua + `
local n = #KEYS - 4
local stamps = {}
for i = 1, n do
  stamps[i] = redis.call('GET', KEYS[4 + i])
  if not stamps[i] then return -1 end
end
local ttl = tonumber(ARGV[5])
local late = tonumber(ARGV[7])
if late > 0 and now() > late then ttl = math.min(ttl, tonumber(ARGV[8])) end
local keep = string.format('%d', ttl + math.floor(ttl / 4))
local h = {'T1', string.format('%.0f', math.floor(now() / 1000) + ttl), ':', string.format('%d', n), ':'}
for i = 1, n do
  local left = redis.call('PTTL', KEYS[4 + i])
  if left >= 0 and left < ttl then redis.call('PEXPIRE', KEYS[4 + i], keep) end
  h[#h + 1] = ARGV[8 + i]
  h[#h + 1] = string.format('%d:', #stamps[i])
  h[#h + 1] = stamps[i]
end
redis.call('SET', KEYS[2], table.concat(h) .. ARGV[4], 'PX', string.format('%d', ttl))
redis.call('UNLINK', KEYS[3], KEYS[4], KEYS[3] .. 'w')
return announce(now())
`)
	// KEYS: the group clock of one slot of a cluster master, which routes
	// the script there. ARGV: prefix, the count n of the master's slots,
	// their n slot tags (see doc.go, Redis Cluster), then per group: name,
	// fresh token, stamp TTL in ms. In every slot, each group invalidation
	// advances the slot's clock and replaces the group's stamp if the slot
	// has one, as the apply script's 'x' does. Redis 7 lets a script with
	// this flag reach undeclared keys of any slot its node serves.
	applyGroupsScript = redis.NewScript("#!lua flags=allow-cross-slot-keys\n" + gclockLua + `
local n = tonumber(ARGV[2])
for i = 3, n + 2 do
  names(ARGV[1], ARGV[i])
  for a = n + 3, #ARGV, 3 do
    local clock = tick(ARGV[a+1])
    local sk = skey(ARGV[a])
    if redis.call('EXISTS', sk) == 1 then
      redis.call('SET', sk, clock .. ':' .. ARGV[a+1], 'PX', ARGV[a+2])
    end
  end
end
return 0
`)
	scripts = []*redis.Script{readOrClaimScript, fillScript, releaseScript, markFailingScript, deleteIfEqualScript, applyScript, deleteScript, writeScript, applyGroupsScript, storeResourceScript, releaseResourceScript}
)

// gclockLua defines the group clock, kept in <prefix>:gseq as
// "<seq>/<id>": seq counts group invalidations, id names the clock's
// incarnation. On a cluster every slot has a clock of its own,
// <prefix>:gseq:{<slot tag>} (see doc.go). The key has no TTL, so
// maxmemory's allkeys policies may evict it; a clock created afresh gets a
// new id, so that no sequence number of the lost clock is ever compared
// with one of the new (docs/RACES.md R36):
//
//   - names(prefix, tag) names the clock (CK) and the stamps (skey) of the
//     slot whose tag is tag, or of the server if tag is empty;
//   - gparse(s) reads "<seq>/<id>" at the start of s (a clock, or a stamp
//     "<clock>:<token>"), or nil for anything else;
//   - gclock(id) returns the clock, creating it as "0/<id>" if it is
//     missing or not of this form: a claim's reference point;
//   - tick(id) advances the clock and returns it, starting a new
//     incarnation named id if it was missing.
const gclockLua = `
local CK, SP, SS
local function names(prefix, tag)
  if tag == '' then
    CK, SP, SS = prefix .. ':gseq', prefix .. ':g:{', '}'
  else
    CK, SP, SS = prefix .. ':gseq:{' .. tag .. '}', prefix .. ':g:{' .. tag .. '}:', ''
  end
end
local function skey(g)
  return SP .. #g .. ':' .. g .. SS
end
local function gparse(s)
  local seq, id = string.match(s, '^(%d+)/([^:/]+)')
  if not seq then return nil end
  return tonumber(seq), id
end
local function gclock(id)
  local c = redis.call('GET', CK)
  if c and gparse(c) then return c end
  c = '0/' .. id
  redis.call('SET', CK, c)
  return c
end
local function tick(id)
  local c = redis.call('GET', CK)
  local seq, cid
  if c then seq, cid = gparse(c) end
  if not seq then seq, cid = 0, id end
  c = string.format('%d', seq + 1) .. '/' .. cid
  redis.call('SET', CK, c)
  return c
end
`

// stampLua defines stamps(argv, at, claim, ttl), after names: for the group
// count n at argv[at], the names at argv[at+1..at+n] and fresh tokens at
// argv[at+n+1..at+2n], it returns the meta list {'1', name, stamp, ...} of the
// groups' current stamps, creating a missing stamp as "<clock>:<token>" and
// keeping every stamp alive for at least ttl ms (one it creates, or that
// would expire sooner, gets ttl and a quarter more). With a claim (the group
// clock the claim saw), it returns nil if any group was invalidated after
// that claim, if a stamp is missing while any group was invalidated since
// (R31, R26), or if the group clock was lost or replaced since the claim,
// so that which groups changed cannot be known (R36): a fill must not land
// as fresh in a group that changed while it fetched. A stamp of an earlier
// incarnation of the clock was written before the claim's incarnation
// began, hence before the claim. writeScript keeps existing stamps alive
// as it does: keep them in step.
const stampLua = gclockLua + `
local function stamps(argv, at, claim, ttl)
  local n = tonumber(argv[at])
  local meta = {'1'}
  if n == 0 then return meta end
  local cur = redis.call('GET', CK)
  -- moved: a group may have been invalidated since the claim. Not if the
  -- clock is the claim's, as it mostly is: every stamp of this
  -- incarnation was drawn from the clock, so none is newer than it, and
  -- no group was invalidated since (the clock's id is the token of the
  -- claim that created it, never reused: R36).
  local moved, cseq, cid, curseq = false
  if claim and cur ~= claim then
    cseq, cid = gparse(claim)
    if not cseq or not cur then return nil end
    local id
    curseq, id = gparse(cur)
    if id ~= cid then return nil end
    moved = true
  elseif not claim and not (cur and gparse(cur)) then
    cur = gclock(argv[at + n + 1])
  end
  -- A stamp created or extended lives a quarter more than needed, so that
  -- the fills of the next quarter of ttl need not extend it again. Whole
  -- numbers go to Redis formatted as such: some servers write a Lua
  -- number such as 2.7e9 in exponent form, which PEXPIRE refuses.
  local keep = string.format('%d', ttl + math.floor(ttl / 4))
  for i = 1, n do
    local g = argv[at + i]
    local sk = skey(g)
    local s = redis.call('GET', sk)
    if not s then
      if moved and curseq > cseq then return nil end
      s = cur .. ':' .. argv[at + n + i]
      redis.call('SET', sk, s, 'PX', keep)
    else
      if moved then
        local seq, id = gparse(s)
        if id == cid and seq > cseq then return nil end
      end
      local left = redis.call('PTTL', sk)
      if left >= 0 and left < ttl then redis.call('PEXPIRE', sk, keep) end
    end
    meta[#meta + 1] = g
    meta[#meta + 1] = s
  end
  return meta
end
`

// announceLua defines announce(at), for the apply scripts once their
// changes are made: it draws the next sequence number from KEYS[1] and
// publishes, with the command ARGV[6] on the channel ARGV[1], the message
// head ARGV[2], the sequence number, at (Redis's clock in µs, now() of
// nowLua) and the body ARGV[3] (see Announcement), and returns the
// sequence number.
const announceLua = `
local function announce(at)
  local seq = redis.call('INCR', KEYS[1])
  -- Big-endian, 8 bytes; by hand rather than struct.pack, which not every
  -- server that speaks the protocol provides, and in one string.char: a
  -- loop that joins 8 one-byte strings costs the script more than its
  -- commands. Exact below 2^53.
  local function u64(n)
    local lo = n % 4294967296
    local hi = (n - lo) / 4294967296
    return string.char(math.floor(hi / 16777216) % 256, math.floor(hi / 65536) % 256, math.floor(hi / 256) % 256, hi % 256,
      math.floor(lo / 16777216) % 256, math.floor(lo / 65536) % 256, math.floor(lo / 256) % 256, lo % 256)
  end
  redis.call(ARGV[6], ARGV[1], ARGV[2] .. u64(seq) .. u64(at) .. ARGV[3])
  return seq
end
`

// wakeLua defines wake(flag, channel, value): if readers marked flag as
// waited on, it clears the mark and publishes value's key name on channel
// (the Store's WakeChannel), so that they read again at once instead of at
// their next poll. A change by Apply wakes them through its announcement
// instead.
const wakeLua = `
local function wake(flag, channel, value)
  if redis.call('DEL', flag .. 'w') == 1 then
    redis.call('PUBLISH', channel, value)
  end
end
`

// BusKeys names the keys and channels of the bus under a prefix.
type BusKeys struct {
	// Channel carries the bus's messages: a shard channel on a cluster.
	Channel string
	// Seq is the counter of the messages' sequence numbers.
	Seq string
	// Epoch holds the fleet epoch token.
	Epoch string
	// Wake is the channel on which the holder of a flag announces that it
	// filled, released or failed the key, when readers wait for it: the
	// message is the key's Keys.Value. A classic channel everywhere.
	Wake string
}

// BusKeysFor returns the bus's names under prefix: "<prefix>:bus",
// "<prefix>:seq", "<prefix>:epoch" and "<prefix>:wake" on one server; on a
// cluster the same with the hash tag "{<prefix>:bus}" appended, so that the
// counter, the epoch and the channel share one slot, and a script that draws
// a sequence number can SPUBLISH the message.
func BusKeysFor(prefix string, cluster bool) BusKeys {
	tag := ""
	if cluster {
		tag = ":{" + prefix + ":bus}"
	}
	return BusKeys{Channel: prefix + ":bus" + tag, Seq: prefix + ":seq" + tag, Epoch: prefix + ":epoch" + tag, Wake: prefix + ":wake" + tag}
}

// GroupStampTTL is the lifetime of the stamp that a group invalidation
// writes. Fills keep a stamp alive at least as long as their value; a
// stamp that expires makes its entries unknown (refused), never fresh.
const GroupStampTTL = 7 * 24 * time.Hour

// Store runs the flag protocol against one Redis deployment. It is safe for
// concurrent use.
type Store struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, on a Redis Cluster; else nil
	prefix  string
	wake    string // the wake channel
	guard   Guard
	timeout time.Duration

	// stampNames remembers the names of the stamps that Peek reads and
	// the lean write script keeps on one server (group -> key), up to
	// maxStampNames of them (stampCount).
	stampNames sync.Map
	stampCount atomic.Int64

	join      joiner   // Peek's batches in flight on one server (join.go)
	joins     sync.Map // on a cluster: *redis.Client of a master -> *joiner
	joinCount atomic.Int64

	replicas    int           // WithWaitReplicas; 0: no WAIT
	waitTimeout time.Duration // WithWaitReplicas

	abortMu sync.Mutex
	abort   context.Context // cancelled by Abort; then replaced
	aborted context.CancelFunc
}

// Guard decides whether an operation may go to Redis and learns how it
// ended: a circuit breaker.
type Guard interface {
	// Allow returns nil if the operation may go ahead, and whether it is a
	// probe; then Done follows with that flag.
	Allow() (probe bool, err error)
	// Done records how the admitted operation ended.
	Done(probe bool, o Outcome)
}

// Outcome is how an operation on Redis ended, for a Guard.
type Outcome int

const (
	// Reached: Redis answered, with a value or an error of its own.
	Reached Outcome = iota
	// Unreachable: a refused or dropped connection, a timeout, a busy or
	// loading server.
	Unreachable
	// Abandoned: the caller's context ended first; it says nothing of Redis.
	Abandoned
)

// ErrUnavailable reports an operation that the Store's Guard refused:
// Redis is known to be unreachable, and the operation was not sent.
var ErrUnavailable = errors.New("l2: redis unavailable")

// unavailableError is ErrUnavailable with the Guard's reason. While Redis
// is down every read fails so, at the rate of the fleet's reads: it is
// formatted only if someone asks for its text.
type unavailableError struct{ cause error }

func (e *unavailableError) Error() string   { return ErrUnavailable.Error() + ": " + e.cause.Error() }
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.cause} }

// opError is the error of one operation, "l2 <op>: <err>", formatted only
// if someone asks for its text.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return "l2 " + e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// Option configures a Store.
type Option func(*Store)

// WithGuard makes every operation ask g first, and report to it after.
func WithGuard(g Guard) Option { return func(s *Store) { s.guard = g } }

// WithTimeout bounds every operation to d (and to its caller's context), so
// that an unreachable Redis costs at most d per operation, not the client's
// read timeout and retries; a group invalidation on a cluster, which runs in
// every slot, gets 4d. Zero: the caller's context only.
func WithTimeout(d time.Duration) Option { return func(s *Store) { s.timeout = d } }

// WithWaitReplicas makes every [Store.Apply] (invalidations and writes, with
// their announcements) wait, after its script and on the same connection,
// until n replicas have acknowledged it (Redis WAIT), for at most timeout.
// If fewer did, Apply returns an error wrapping [ErrNotReplicated]: the
// change was made on the master, but a failover may yet lose it. Each
// operation's timeout (WithTimeout) is extended by timeout. Fills, claims and
// releases do not wait: losing one in a failover costs a miss, never a stale
// value. n <= 0: no waiting, the default.
func WithWaitReplicas(n int, timeout time.Duration) Option {
	return func(s *Store) { s.replicas, s.waitTimeout = max(n, 0), timeout }
}

// ErrNotReplicated reports a change that Redis made but that fewer replicas
// than [WithWaitReplicas] asked for acknowledged in time: the promotion of a
// replica that lacks it would undo it.
var ErrNotReplicated = errors.New("l2: not acknowledged by enough replicas")

// replicaError is ErrNotReplicated with the figures.
type replicaError struct {
	got, want int64
	timeout   time.Duration
}

func (e *replicaError) Error() string {
	return fmt.Sprintf("%s: %d of %d within %v", ErrNotReplicated, e.got, e.want, e.timeout)
}
func (e *replicaError) Unwrap() error { return ErrNotReplicated }

// NewStore returns a Store over rdb, for keys named under prefix (group
// stamps and the group sequence are named in the scripts from it).
func NewStore(rdb redis.UniversalClient, prefix string, opts ...Option) *Store {
	s := &Store{rdb: rdb, prefix: prefix}
	s.cluster, _ = rdb.(*redis.ClusterClient)
	s.join.client = rdb
	s.wake = BusKeysFor(prefix, s.cluster != nil).Wake
	s.abort, s.aborted = context.WithCancel(context.Background())
	for _, o := range opts {
		o(s)
	}
	return s
}

// Cluster reports whether the Store runs on a Redis Cluster: its client is
// a *redis.ClusterClient.
func (s *Store) Cluster() bool { return s.cluster != nil }

// WakeChannel returns the channel on which the Store's scripts wake waiting
// readers (BusKeys.Wake).
func (s *Store) WakeChannel() string { return s.wake }

// tag returns the slot tag of k's slot on a cluster, or "" on one server.
func (s *Store) tag(k Keys) string {
	if s.cluster == nil {
		return ""
	}
	return SlotTag(Slot(k.Value))
}

// clockKey returns the name of the group clock of the slot whose tag is
// tag, or of the server's if tag is "" (gclockLua builds the same).
func (s *Store) clockKey(tag string) string {
	if tag == "" {
		return s.prefix + ":gseq"
	}
	return s.prefix + ":gseq:{" + tag + "}"
}

// scriptKeys returns the KEYS of the read and fill scripts for k.
func (s *Store) scriptKeys(k Keys, tag string) []string {
	return []string{k.Value, k.Flag, k.Meta, s.clockKey(tag)}
}

// do runs one Redis operation under the guard and the timeout.
func (s *Store) do(ctx context.Context, op func(context.Context) error) error {
	return s.doFor(ctx, 0, op)
}

// doFor is do with the timeout extended by extra.
func (s *Store) doFor(ctx context.Context, extra time.Duration, op func(context.Context) error) (err error) {
	probe, err := s.admit()
	if err != nil {
		return err
	}
	err = errEnded // until op returns
	defer func() { s.report(ctx, probe, err) }()
	return s.bounded(ctx, extra, op)
}

// errEnded is what the Guard learns of an operation that did not return:
// its goroutine ended inside it (runtime.Goexit in a hook of the Redis
// client, as t.FailNow does), or a panic of such a hook is unwinding it
// (outside a batch of peeks, which recovers them). Abandoned, since it says
// nothing of Redis: a breaker's probe is freed rather than held for ever,
// with every operation after it refused.
var errEnded = fmt.Errorf("%w: the goroutine ended inside the operation", ErrPanic)

// admit asks the Guard whether an operation may go to Redis: an error
// wrapping ErrUnavailable if not, else whether it is the Guard's probe,
// for report.
func (s *Store) admit() (probe bool, err error) {
	if s.guard == nil {
		return false, nil
	}
	if probe, err = s.guard.Allow(); err != nil {
		return false, &unavailableError{cause: err}
	}
	return probe, nil
}

// report tells the Guard how an operation it admitted ended, for a caller
// whose context is ctx.
func (s *Store) report(ctx context.Context, probe bool, err error) {
	if s.guard != nil {
		s.guard.Done(probe, outcome(ctx, err))
	}
}

// bounded runs op under ctx, the timeout (extended by extra) and Abort.
func (s *Store) bounded(ctx context.Context, extra time.Duration, op func(context.Context) error) error {
	var (
		opCtx  context.Context
		cancel context.CancelFunc
	)
	if s.timeout > 0 {
		opCtx, cancel = context.WithTimeout(ctx, s.timeout+extra)
	} else {
		opCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	s.abortMu.Lock()
	abort := s.abort
	s.abortMu.Unlock()
	defer context.AfterFunc(abort, cancel)()
	return op(opCtx)
}

// Abort ends every operation in flight at once, as if Redis had not
// answered in time: for a caller that has proof that Redis is down (a
// refused connection), so that nobody waits for the timeout. Operations
// that start afterwards are not affected.
func (s *Store) Abort() {
	s.abortMu.Lock()
	defer s.abortMu.Unlock()
	s.aborted()
	s.abort, s.aborted = context.WithCancel(context.Background())
}

// outcome tells an answer from Redis, Redis unreachable, and the caller
// giving up.
func outcome(caller context.Context, err error) Outcome {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		return Reached
	case caller.Err() != nil, errors.Is(err, ErrPanic):
		return Abandoned // says nothing of Redis
	case errors.Is(err, ErrUnexpectedReply):
		return Reached
	case unreachable(err):
		return Unreachable
	}
	return Reached
}

// relearnSlots has the cluster client reload its slot map if err, from an
// operation that went through a master's own client (a peek, or a write
// that waits for replicas), says that the slot map it used is out of date:
// the master could not be reached (a failover may have moved its slots),
// or it answered MOVED or ASK (a reshard did; its own client follows no
// redirection, R58). The cluster client's own commands follow both.
func (s *Store) relearnSlots(ctx context.Context, err error) {
	if s.cluster != nil && (unreachable(err) || redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")) {
		s.cluster.ReloadState(ctx)
	}
}

// unreachable reports whether err says that Redis could not be reached.
func unreachable(err error) bool {
	var reply redis.Error
	if errors.As(err, &reply) {
		msg := reply.Error()
		for _, p := range []string{"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	return true // network errors, timeouts, a closed pool
}

// LoadScripts loads the protocol's scripts into the server's script cache so
// that the first operations cost one round trip each. Scripts evicted later
// (SCRIPT FLUSH, a restart) are reloaded on demand: every script call falls
// back from EVALSHA to EVAL on NOSCRIPT (docs/RACES.md R23).
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range scripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("l2 load scripts: %w", err)
		}
	}
	return nil
}

// ReadOrClaim reads k's value; if it is absent, it claims k's flag with
// token for flagTTL, all in one round trip. token must be fresh for every
// claim (consistency.NewToken), non-empty and without ':' or '/': the
// first claim after the group clock was lost names its new incarnation
// after it (R36), and ErrBadToken refuses any other.
func (s *Store) ReadOrClaim(ctx context.Context, k Keys, token string, flagTTL time.Duration) (Read, error) {
	return s.ReadOrClaimWith(ctx, k, token, flagTTL, Claim{})
}

// Claim says when ReadOrClaimWith claims a key whose value is present, for
// a refresh that serves the old value meanwhile.
type Claim struct {
	// Below: claim a present value whose remaining lifetime in Redis is at
	// most Below (its refresh zone). Zero: never. A stored "not found" is
	// never claimed for this.
	Below time.Duration
	// Always: claim a present value whatever its lifetime (an early or a
	// forced refresh).
	Always bool
}

// readArgs returns the read script's ARGV for a claim with token under c,
// of a key in the slot whose tag is tag.
func (s *Store) readArgs(token string, flagTTL time.Duration, c Claim, tag string) []any {
	below := int64(-1)
	if c.Below > 0 {
		below = ttlMillis(c.Below)
	}
	always := "0"
	if c.Always {
		always = "1"
	}
	return []any{token, ttlMillis(flagTTL), s.prefix, below, always, tag}
}

// ReadOrClaimWith is ReadOrClaim that also claims a present value when c
// says it is due for a refresh: the reply is then StaleClaimed or StaleBusy,
// with the value. The lifetime is Redis's own (PTTL), so no clock of any
// node is compared with another's (docs/RACES.md R29).
func (s *Store) ReadOrClaimWith(ctx context.Context, k Keys, token string, flagTTL time.Duration, c Claim) (Read, error) {
	if flagTTL <= 0 {
		return Read{}, fmt.Errorf("l2 read: %w", errNonPositiveTTL)
	}
	if err := checkToken(token); err != nil {
		return Read{}, fmt.Errorf("l2 read: %w", err)
	}
	var reply any
	err := s.do(ctx, func(ctx context.Context) (err error) {
		tag := s.tag(k)
		reply, err = readOrClaimScript.Run(ctx, s.rdb, s.scriptKeys(k, tag), s.readArgs(token, flagTTL, c, tag)...).Result()
		return err
	})
	if err != nil {
		return Read{}, &opError{op: "read", err: err}
	}
	return parseRead(reply)
}

// parseRead checks and decodes the read script's reply: a string for a
// read without a value (parseBrief), else a table.
func parseRead(result any) (Read, error) {
	if brief, ok := result.(string); ok {
		return parseBrief(brief)
	}
	reply, ok := result.([]any)
	if !ok {
		return Read{}, fmt.Errorf("l2 read: %w: %T", ErrUnexpectedReply, result)
	}
	if len(reply) != 8 {
		return Read{}, fmt.Errorf("l2 read: %w: %d elements", ErrUnexpectedReply, len(reply))
	}
	state, ok1 := reply[0].(int64)
	value, ok2 := reply[1].(string)
	ttl, ok3 := reply[2].(int64)
	names, ok4 := reply[3].([]any)
	clock, ok5 := reply[4].(string)
	stale, ok6 := reply[5].(int64)
	failing, ok7 := reply[6].(int64)
	neg, ok8 := reply[7].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || !ok7 || !ok8 || state < int64(Hit) || state > int64(StaleBusy) {
		return Read{}, fmt.Errorf("l2 read: %w: %v", ErrUnexpectedReply, reply)
	}
	r := Read{
		State:    State(state),
		TTL:      time.Duration(ttl) * time.Millisecond,
		Stale:    stale == 1,
		Failing:  failing == 1,
		Negative: neg == 1,
	}
	r.Clock = clock
	if (r.State == Claimed || r.State == StaleClaimed) && clock == "" {
		return Read{}, fmt.Errorf("l2 read: %w: a claim without a group clock", ErrUnexpectedReply)
	}
	if r.State == Hit || r.State == StaleClaimed || r.State == StaleBusy {
		// A value without a header is an earlier version's: the envelope
		// alone. One with a header the script accepted but ParseStored
		// does not goes on whole: the caller cannot decode it, and
		// removes it.
		if v, err := ParseStored(value); err == nil {
			value = v.Envelope
		}
		r.Value = []byte(value)
		for _, n := range names {
			name, ok := n.(string)
			if !ok {
				return Read{}, fmt.Errorf("l2 read: %w: group %v", ErrUnexpectedReply, n)
			}
			r.Groups = append(r.Groups, name)
		}
	}
	return r, nil
}

// parseBrief decodes the read script's reply for a read without a value:
// "2", the removed-stale flag and the group clock for Claimed; "3", the
// removed-stale flag, the failing flag and the flag's TTL in ms for Busy.
// A flag is '0' or '1'.
func parseBrief(s string) (Read, error) {
	bad := func() (Read, error) {
		return Read{}, fmt.Errorf("l2 read: %w: %q", ErrUnexpectedReply, s)
	}
	flag := func(i int) (bool, bool) {
		if i >= len(s) || (s[i] != '0' && s[i] != '1') {
			return false, false
		}
		return s[i] == '1', true
	}
	if len(s) < 3 {
		return bad()
	}
	stale, ok := flag(1)
	if !ok {
		return bad()
	}
	switch s[0] {
	case '2':
		return Read{State: Claimed, Stale: stale, Clock: s[2:]}, nil
	case '3':
		failing, ok := flag(2)
		if !ok {
			return bad()
		}
		ttl, err := strconv.ParseInt(s[3:], 10, 64)
		if err != nil || ttl > math.MaxInt64/int64(time.Millisecond) || ttl < math.MinInt64/int64(time.Millisecond) {
			return bad()
		}
		return Read{State: Busy, Stale: stale, Failing: failing, TTL: time.Duration(ttl) * time.Millisecond}, nil
	}
	return bad()
}

// Fill writes envelope as k's value with ttl if k's flag still holds token,
// and clears the flag, atomically. It reports whether the value was written:
// false means an invalidation, an expiry of the flag, or another claim came
// first (R01, R03, R04, R05).
func (s *Store) Fill(ctx context.Context, k Keys, token string, envelope []byte, ttl time.Duration) (bool, error) {
	return s.FillInGroups(ctx, k, token, envelope, ttl, nil, "")
}

// FillInGroups is Fill for a value that belongs to groups. clock is the
// Read.Clock of the claim. The fill is also refused if any of the groups was
// invalidated after the claim, if a group's stamp is missing and any group
// was invalidated since (R31, R26), or if the group clock was lost since
// (R36); otherwise the value is stored with the groups' current stamps,
// missing ones created. With groups, a clock that no claim returned ("")
// refuses the fill.
func (s *Store) FillInGroups(ctx context.Context, k Keys, token string, envelope []byte, ttl time.Duration, groups []string, clock string) (bool, error) {
	return s.FillEntry(ctx, k, token, Entry{Envelope: envelope, TTL: ttl, Groups: groups}, clock)
}

// Entry is what FillEntry stores.
type Entry struct {
	// Envelope is the stored value; empty for a Negative entry.
	Envelope []byte
	// TTL is the entry's lifetime in Redis; positive.
	TTL time.Duration
	// Groups are the groups the entry belongs to.
	Groups []string
	// Negative stores "not found": a read reports Read.Negative, and the
	// entry is never claimed for a refresh by Claim.Below.
	Negative bool
}

// FillEntry is FillInGroups for any Entry, a "not found" included.
func (s *Store) FillEntry(ctx context.Context, k Keys, token string, e Entry, clock string) (bool, error) {
	if e.TTL <= 0 {
		return false, fmt.Errorf("l2 fill: %w", errNonPositiveTTL)
	}
	marker := "1"
	if e.Negative {
		marker = "n"
	}
	tag := s.tag(k)
	args := make([]any, 0, 9+2*len(e.Groups))
	args = append(args, token, e.Envelope, ttlMillis(e.TTL), clock, s.prefix, marker, tag, s.wake)
	args = appendGroups(args, e.Groups)
	var n int64
	err := s.do(ctx, func(ctx context.Context) (err error) {
		n, err = fillScript.Run(ctx, s.rdb, s.scriptKeys(k, tag), args...).Int64()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("l2 fill: %w", err)
	}
	return n == 1, nil
}

// appendGroups appends a group count, the names, and a fresh token for each
// (used if its stamp has to be created).
func appendGroups(args []any, groups []string) []any {
	args = append(args, len(groups))
	for _, g := range groups {
		args = append(args, g)
	}
	for range groups {
		args = append(args, consistency.NewToken())
	}
	return args
}

// Release clears k's flag if it still holds token, so that waiters need not
// wait for it to expire. A claimant whose fetch failed calls it.
func (s *Store) Release(ctx context.Context, k Keys, token string) error {
	if err := s.do(ctx, func(ctx context.Context) error {
		return releaseScript.Run(ctx, s.rdb, []string{k.Flag, k.Value}, token, s.wake).Err()
	}); err != nil {
		return fmt.Errorf("l2 release: %w", err)
	}
	return nil
}

// MarkFailing turns k's flag, if it still holds token, into a failure mark
// for d: until it expires or k is invalidated, nobody can claim k, and
// readers see Read.Failing. A claimant whose fetch failed while an old value
// could still be served calls it, so that the fleet serves that value
// instead of retrying the failing source at once.
func (s *Store) MarkFailing(ctx context.Context, k Keys, token string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("l2 mark failing: %w", errNonPositiveTTL)
	}
	if err := s.do(ctx, func(ctx context.Context) error {
		return markFailingScript.Run(ctx, s.rdb, []string{k.Flag, k.Value}, token, ttlMillis(d), s.wake).Err()
	}); err != nil {
		return fmt.Errorf("l2 mark failing: %w", err)
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

// Change is one part of [Store.Apply]: delete a key's value, flag and
// meta; or, with Write, store Envelope for TTL in Groups and delete its flag;
// or, with Group set, invalidate that group (Keys unused).
type Change struct {
	Keys     Keys
	Write    bool
	Envelope []byte
	TTL      time.Duration
	Groups   []string
	// Group, if set, makes this change a group invalidation: the group gets
	// a new stamp, drawn from the group sequence, so that no value filled
	// in it before is served again.
	Group string
	// LateAfter, for a Write, is the instant on Redis's clock after which
	// the write is late: its caller has given up on it (its bytes reached
	// Redis after its deadline), and a newer write may have landed. A late
	// write lives at most LateTTL, whatever TTL says (R44). Zero: never
	// late.
	LateAfter time.Time
	// LateTTL is the lifetime of a late write; positive if LateAfter is set.
	LateTTL time.Duration
}

// Announcement is the message that [Store.Apply] publishes on Channel: Head,
// then the 8-byte big-endian sequence number drawn from SeqKey, then Redis's
// clock (TIME) in microseconds since the Unix epoch as 8 big-endian bytes,
// then Body.
type Announcement struct {
	SeqKey  string
	Channel string
	Head    []byte
	Body    []byte
}

// Apply makes every change and, if a is not nil, draws the next sequence
// number and publishes the announcement, in one atomic step and, but for
// a write that finds a stamp of its groups missing (see writeScript), one
// round trip: a receiver of the message can never read a value that the
// message says is gone (docs/RACES.md R14). Deleting a key's flag with its value refuses
// any fill in progress (R01). It returns the sequence number (0 without an
// announcement). All keys must live on one server: SeqKey is not
// hash-tagged with the changes.
func (s *Store) Apply(ctx context.Context, changes []Change, a *Announcement) (uint64, error) {
	if a != nil && (a.Channel == "" || a.SeqKey == "") {
		return 0, errors.New("l2 apply: an announcement needs a channel and a sequence key")
	}
	var calls, groupOps []scriptCall // groupOps: on a cluster
	lean, isLean, err := s.writeCall(changes, a)
	if err != nil {
		return 0, err
	}
	if !isLean {
		ops, err := encodeChanges(changes)
		if err != nil {
			return 0, err
		}
		calls, groupOps = s.applyCalls(ops, a)
	}
	var (
		seq   int64
		acked = int64(s.replicas)
	)
	extra := s.waitTimeout
	if len(groupOps) > 0 {
		// A group invalidation on a cluster runs in every slot of every
		// master: four times the timeout of one operation.
		extra += 3 * s.timeout
	}
	sc := applyScript
	if deletesOnly(changes, s.cluster != nil) {
		sc = deleteScript
	}
	err = s.doFor(ctx, extra, func(ctx context.Context) error {
		if isLean {
			cmds, n, err := s.runScripts(ctx, writeScript, []scriptCall{lean})
			if err != nil {
				return err
			}
			if seq, err = cmds[0].Int64(); err != nil || seq >= 0 {
				acked = n
				return err
			}
			// A stamp is missing: applyScript creates it. Its tokens are
			// drawn only now, as most writes find their stamps.
			ops, err := encodeChanges(changes)
			if err != nil {
				return err
			}
			calls, _ = s.applyCalls(ops, a)
		}
		cmds, n, err := s.runScripts(ctx, sc, calls)
		if err != nil {
			return err
		}
		acked = n
		if s.cluster == nil {
			seq, err = cmds[0].Int64()
			return err
		}
		if len(groupOps) > 0 {
			if n, err = s.invalidateGroups(ctx, groupOps); err != nil {
				return err
			}
			acked = min(acked, n)
		}
		if a == nil || acked < int64(s.replicas) {
			return nil
		}
		// Every change is made (and acknowledged): announce them. A message
		// never overtakes the changes it announces (R14); on a cluster the
		// two are not one atomic step, see doc.go.
		ann := s.applyCall(a, "", "SPUBLISH")
		if cmds, acked, err = s.runScripts(ctx, deleteScript, []scriptCall{ann}); err != nil {
			return err
		}
		seq, err = cmds[0].Int64()
		return err
	})
	if err != nil {
		s.relearnSlots(ctx, err)
		return 0, fmt.Errorf("l2 apply: %w", err)
	}
	if acked < int64(s.replicas) {
		// Redis answered: not a fault of the connection, so not the guard's
		// business (do saw no error).
		return uint64(seq), fmt.Errorf("l2 apply: %w", &replicaError{got: acked, want: int64(s.replicas), timeout: s.waitTimeout})
	}
	return uint64(seq), nil
}

// applyCalls returns the calls of applyScript that make ops, the changes
// encoded by encodeChanges, and announce a: on one server, one call; on a
// cluster, one per slot of the key changes (see slotCalls), and apart, the
// group invalidations, which invalidateGroups makes.
func (s *Store) applyCalls(ops []scriptCall, a *Announcement) (calls, groupOps []scriptCall) {
	if s.cluster == nil {
		c := s.applyCall(a, "", "PUBLISH")
		for _, o := range ops {
			c.keys = append(c.keys, o.keys...)
			c.args = append(c.args, o.args...)
		}
		return []scriptCall{c}, nil
	}
	// Keys first, then groups: a group invalidated in the same batch as a
	// write of one of its members makes that write stale, at worst a miss,
	// whatever order the batch had.
	var keyOps []scriptCall
	for _, o := range ops {
		if len(o.keys) > 0 {
			keyOps = append(keyOps, o)
		} else {
			groupOps = append(groupOps, o)
		}
	}
	return s.slotCalls(keyOps), groupOps
}

// writeCall returns the call of writeScript that makes changes and
// announces a, if they are one write on one server and the Store waits
// for no replicas.
func (s *Store) writeCall(changes []Change, a *Announcement) (scriptCall, bool, error) {
	// With WithWaitReplicas, a write whose stamp is missing would WAIT
	// twice, once for nothing: such a Store runs applyScript alone.
	if s.cluster != nil || s.replicas > 0 || a == nil || len(changes) != 1 || !changes[0].Write || changes[0].Group != "" {
		return scriptCall{}, false, nil
	}
	c := changes[0]
	ttl, lateAfter, lateTTL, err := writeTerms(c)
	if err != nil {
		return scriptCall{}, false, err
	}
	keys := make([]string, 0, 4+len(c.Groups))
	keys = append(keys, a.SeqKey, c.Keys.Value, c.Keys.Flag, c.Keys.Meta)
	args := make([]any, 0, 8+len(c.Groups))
	args = append(args, a.Channel, a.Head, a.Body, c.Envelope, ttl, "PUBLISH", lateAfter, lateTTL)
	for _, g := range c.Groups {
		keys = append(keys, s.stampKey("", g))
		args = append(args, strconv.Itoa(len(g))+":"+g)
	}
	return scriptCall{keys: keys, args: args}, true, nil
}

// deletesOnly reports whether every change that the apply script would
// make deletes a key, so that its lean form, deleteScript, can make them:
// with groupsApart (on a cluster, where invalidateGroups runs the group
// invalidations), the group invalidations do not count.
func deletesOnly(changes []Change, groupsApart bool) bool {
	for _, c := range changes {
		if c.Write || (c.Group != "" && !groupsApart) {
			return false
		}
	}
	return true
}

// applyCall starts a call of the apply script, before its changes: anchored
// on a's sequence counter announcing a with publish (PUBLISH or SPUBLISH),
// or, with a nil, on the group clock of the slot whose tag is tag (of the
// server if tag is ""), announcing nothing.
func (s *Store) applyCall(a *Announcement, tag, publish string) scriptCall {
	if a == nil {
		return scriptCall{keys: []string{s.clockKey(tag)}, args: []any{"", "", "", s.prefix, tag, publish}}
	}
	return scriptCall{keys: []string{a.SeqKey}, args: []any{a.Channel, a.Head, a.Body, s.prefix, tag, publish}}
}

// scriptCall is one run of a script: its KEYS and ARGV.
type scriptCall struct {
	keys []string
	args []any
}

// encodeChanges checks changes and encodes each for the apply script: the
// keys it declares (none for a group) and its op's ARGV.
func encodeChanges(changes []Change) ([]scriptCall, error) {
	ops := make([]scriptCall, len(changes))
	for i, c := range changes {
		switch {
		case c.Group != "":
			ops[i].args = []any{"g", c.Group, consistency.NewToken(), ttlMillis(GroupStampTTL)}
		case c.Write:
			ttl, lateAfter, lateTTL, err := writeTerms(c)
			if err != nil {
				return nil, err
			}
			ops[i].keys = []string{c.Keys.Value, c.Keys.Flag, c.Keys.Meta}
			ops[i].args = appendGroups([]any{"s", c.Envelope, ttl, lateAfter, lateTTL}, c.Groups)
		default:
			ops[i].keys = []string{c.Keys.Value, c.Keys.Flag, c.Keys.Meta}
			ops[i].args = []any{"d"}
		}
	}
	return ops, nil
}

// writeTerms checks a write change and returns, as the scripts take them,
// its TTL in ms, the instant after which it is late (µs on Redis's clock;
// 0: never) and the TTL in ms of a late write.
func writeTerms(c Change) (ttl, lateAfter, lateTTL int64, err error) {
	if c.TTL <= 0 {
		return 0, 0, 0, fmt.Errorf("l2 apply: %w", errNonPositiveTTL)
	}
	lateTTL = 1
	if !c.LateAfter.IsZero() {
		if c.LateTTL <= 0 {
			return 0, 0, 0, fmt.Errorf("l2 apply: LateAfter without a positive LateTTL")
		}
		lateAfter, lateTTL = max(c.LateAfter.UnixMicro(), 1), ttlMillis(c.LateTTL)
	}
	return ttlMillis(c.TTL), lateAfter, lateTTL, nil
}

// slotCalls splits ops into one apply script per cluster slot, each anchored
// on its slot's group clock and announcing nothing, keeping the order of
// ops within each slot. A key's change goes to its slot; a group's goes to
// every slot, as 'x': it advances every slot's clock, and replaces the
// group's stamp in the slots that have one (see doc.go, Cluster).
func (s *Store) slotCalls(ops []scriptCall) []scriptCall {
	bySlot := make(map[int]*scriptCall)
	var order []int
	call := func(slot int) *scriptCall {
		c := bySlot[slot]
		if c == nil {
			call := s.applyCall(nil, SlotTag(slot), "PUBLISH")
			c = &call
			bySlot[slot] = c
			order = append(order, slot)
		}
		return c
	}
	for _, o := range ops {
		if len(o.keys) > 0 {
			c := call(Slot(o.keys[0]))
			c.keys = append(c.keys, o.keys...)
			c.args = append(c.args, o.args...)
			continue
		}
		x := append([]any{"x"}, o.args[1:]...)
		for slot := range Slots {
			c := call(slot)
			c.args = append(c.args, x...)
		}
	}
	calls := make([]scriptCall, len(order))
	for i, slot := range order {
		calls[i] = *bySlot[slot]
	}
	return calls
}

// invalidateGroups makes the group invalidations ops on a cluster: in every
// slot, as the apply script's 'x' op does, but with one script per master
// over every slot it serves (applyGroupsScript). If the slot map moved
// meanwhile (a reshard, a failover), a master refuses the slots it does not
// serve, and every slot gets an apply script of its own, which the client
// routes and redirects (MOVED, ASK); ticking a slot's clock twice only
// refuses more fills. It returns how many replicas acknowledged, as
// runScripts.
func (s *Store) invalidateGroups(ctx context.Context, ops []scriptCall) (int64, error) {
	var groups []any // name, token, TTL: the 'g' op's ARGV without the op
	for _, o := range ops {
		groups = append(groups, o.args[1:]...)
	}
	if calls, err := s.masterCalls(ctx, groups); err == nil {
		if _, acked, err := s.runScripts(ctx, applyGroupsScript, calls); err == nil {
			return acked, nil
		}
	}
	_, acked, err := s.runScripts(ctx, applyScript, s.slotCalls(ops))
	return acked, err
}

// masterCalls returns one applyGroupsScript call per master of the
// cluster's slot map, over the group clocks of all its slots.
func (s *Store) masterCalls(ctx context.Context, groups []any) ([]scriptCall, error) {
	ranges, err := s.cluster.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	byMaster := make(map[string]*scriptCall)
	var calls []*scriptCall
	for _, r := range ranges {
		if len(r.Nodes) == 0 {
			return nil, fmt.Errorf("l2: slots %d-%d have no master", r.Start, r.End)
		}
		c := byMaster[r.Nodes[0].Addr]
		if c == nil {
			c = &scriptCall{keys: []string{s.clockKey(SlotTag(int(r.Start)))}, args: []any{s.prefix, 0}}
			byMaster[r.Nodes[0].Addr] = c
			calls = append(calls, c)
		}
		for slot := r.Start; slot <= r.End; slot++ {
			c.args = append(c.args, SlotTag(int(slot)))
		}
	}
	out := make([]scriptCall, len(calls))
	for i, c := range calls {
		c.args[1] = len(c.args) - 2
		out[i] = scriptCall{keys: c.keys, args: append(c.args, groups...)}
	}
	return out, nil
}

// runScripts runs sc once per call and returns the replies, in the order of
// calls, and how many replicas acknowledged them all (0 when the Store
// waits for none). With WithWaitReplicas, the calls of each master go in
// one pipeline on one connection, followed by WAIT, and the count is the
// smallest of the masters'. On one server a lone call without WAIT is a
// plain EVALSHA; otherwise the calls are pipelined (go-redis sends a
// cluster pipeline's commands to their slots' masters, following
// redirections). A script cache that lost the script (R23) gets it again.
func (s *Store) runScripts(ctx context.Context, sc *redis.Script, calls []scriptCall) ([]*redis.Cmd, int64, error) {
	switch {
	case s.replicas == 0 && s.cluster == nil && len(calls) == 1:
		c := sc.Run(ctx, s.rdb, calls[0].keys, calls[0].args...)
		return []*redis.Cmd{c}, 0, c.Err()
	case s.replicas == 0:
		return pipeScripts(ctx, s.rdb.Pipeline, sc, calls, 0, 0)
	case s.cluster == nil:
		return pipeScripts(ctx, s.rdb.Pipeline, sc, calls, s.replicas, s.waitTimeout)
	}
	// WAIT counts the writes of its own connection: each master's calls go
	// through that master's client, in one pipeline.
	byMaster := make(map[*redis.Client][]int)
	var masters []*redis.Client
	for i, c := range calls {
		m, err := s.cluster.MasterForKey(ctx, c.keys[0])
		if err != nil {
			return nil, 0, err
		}
		if _, ok := byMaster[m]; !ok {
			masters = append(masters, m)
		}
		byMaster[m] = append(byMaster[m], i)
	}
	cmds := make([]*redis.Cmd, len(calls))
	acks := make([]int64, len(masters))
	errs := make([]error, len(masters))
	var wg sync.WaitGroup
	for j, m := range masters {
		wg.Go(func() {
			idx := byMaster[m]
			mine := make([]scriptCall, len(idx))
			for k, i := range idx {
				mine[k] = calls[i]
			}
			got, acked, err := pipeScripts(ctx, m.Pipeline, sc, mine, s.replicas, s.waitTimeout)
			for k, i := range idx {
				if k < len(got) {
					cmds[i] = got[k]
				}
			}
			acks[j], errs[j] = acked, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	acked := int64(s.replicas)
	for _, a := range acks {
		acked = min(acked, a)
	}
	return cmds, acked, nil
}

// pipeScripts runs sc once per call in a pipeline made by newPipe, then, if
// replicas > 0, WAIT for that many replicas for at most timeout, and returns
// the replies and WAIT's count. Calls that found the script missing are sent
// again with the script itself, in a second pipeline with WAIT again.
func pipeScripts(ctx context.Context, newPipe func() redis.Pipeliner, sc *redis.Script, calls []scriptCall, replicas int, timeout time.Duration) ([]*redis.Cmd, int64, error) {
	cmds := make([]*redis.Cmd, len(calls))
	pipe := newPipe()
	for i, c := range calls {
		cmds[i] = sc.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	// WAIT 0 would block for ever: ttlMillis rounds up to 1ms at least. A
	// WAIT never outlasts ctx, whose deadline leaves room for one WAIT of
	// timeout: after a NOSCRIPT the second WAIT gets a quarter less than
	// the time left, so that a write that no replica acknowledges reports
	// ErrNotReplicated rather than a deadline the reply missed.
	wait := func(p redis.Pipeliner) *redis.Cmd {
		if replicas == 0 {
			return nil
		}
		d := timeout
		if end, ok := ctx.Deadline(); ok {
			d = min(d, time.Until(end)*3/4)
		}
		return p.Do(ctx, "wait", replicas, ttlMillis(max(d, time.Millisecond)))
	}
	w := wait(pipe)
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	var again []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		pipe = newPipe()
		for _, i := range again {
			cmds[i] = sc.Eval(ctx, pipe, calls[i].keys, calls[i].args...)
		}
		w = wait(pipe)
		_, _ = pipe.Exec(ctx)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return cmds, 0, err
		}
	}
	if w == nil {
		return cmds, 0, nil
	}
	acked, err := w.Int64()
	return cmds, acked, err
}

// DeleteIfEqual deletes k's value if it still holds exactly b: it removes a
// corrupt entry without racing a good value written meanwhile.
func (s *Store) DeleteIfEqual(ctx context.Context, k Keys, b []byte) error {
	if err := s.do(ctx, func(ctx context.Context) error {
		return deleteIfEqualScript.Run(ctx, s.rdb, []string{k.Value}, b).Err()
	}); err != nil {
		return fmt.Errorf("l2 delete corrupt: %w", err)
	}
	return nil
}

// errNonPositiveTTL reports a lifetime that Redis cannot express.
var errNonPositiveTTL = errors.New("l2: a TTL must be positive")

// ErrBadToken reports a claim token that could not name an incarnation of
// the group clock: empty, or holding ':' or '/'.
var ErrBadToken = errors.New("l2: a claim token must be non-empty, without ':' or '/'")

// checkToken returns an error wrapping ErrBadToken for a token that could
// not name an incarnation of the group clock (gclockLua's gparse).
func checkToken(token string) error {
	if token == "" || strings.ContainsAny(token, ":/") {
		return fmt.Errorf("%w: %q", ErrBadToken, token)
	}
	return nil
}

// ttlMillis rounds a positive duration up to whole milliseconds: PX 0 is an
// error in Redis, and rounding down would shorten the lifetime.
func ttlMillis(d time.Duration) int64 {
	return d.Milliseconds() + min(int64(d%time.Millisecond), 1) // no overflow near MaxInt64
}
