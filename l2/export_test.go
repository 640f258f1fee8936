package l2

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// ApplyScriptHash, DeleteScriptHash and WriteScriptHash are the SHA1
// digests of the apply script and of its lean forms for deletes alone and
// for one write.
var ApplyScriptHash, DeleteScriptHash, WriteScriptHash = applyScript.Hash(), deleteScript.Hash(), writeScript.Hash()

// JoinQueued returns how many peeks wait for the next joined batch of s:
// on one server, or through any master's client on a cluster.
func JoinQueued(s *Store) int {
	n := queued(&s.join)
	s.joins.Range(func(_, j any) bool {
		n += queued(j.(*joiner))
		return true
	})
	return n
}

func queued(j *joiner) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.queue)
}

// Joiners returns the master clients through which s, on a cluster, has
// joined peeks.
func Joiners(s *Store) []*redis.Client {
	var out []*redis.Client
	s.joins.Range(func(m, _ any) bool {
		out = append(out, m.(*redis.Client))
		return true
	})
	return out
}

// ParseBrief decodes the read script's one-string reply (parseBrief).
func ParseBrief(s string) (Read, error) { return parseBrief(s) }

// ApplyScriptOnly is Apply on one server, but always through the apply
// script, even for a batch that Apply sends to one of its lean forms.
func ApplyScriptOnly(ctx context.Context, s *Store, changes []Change, a *Announcement) (uint64, error) {
	ops, err := encodeChanges(changes)
	if err != nil {
		return 0, err
	}
	calls, _ := s.applyCalls(ops, a)
	var seq int64
	err = s.doFor(ctx, s.waitTimeout, func(ctx context.Context) error {
		cmds, _, err := s.runScripts(ctx, applyScript, calls)
		if err != nil {
			return err
		}
		seq, err = cmds[0].Int64()
		return err
	})
	return uint64(seq), err
}
