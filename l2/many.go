package l2

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReadOrClaimMany is ReadOrClaimWith for many keys in one pipelined round
// trip: tokens[i] is the claim token of ks[i]. It returns an error for the
// whole batch when Redis could not be reached; otherwise one Read or one
// error per key (a script error of one key does not fail the others).
func (s *Store) ReadOrClaimMany(ctx context.Context, ks []Keys, tokens []string, flagTTL time.Duration, c Claim) ([]Read, []error, error) {
	if flagTTL <= 0 {
		return nil, nil, fmt.Errorf("l2 read many: %w", errNonPositiveTTL)
	}
	if len(tokens) != len(ks) {
		return nil, nil, fmt.Errorf("l2 read many: %d tokens for %d keys", len(tokens), len(ks))
	}
	for _, token := range tokens {
		if err := checkToken(token); err != nil {
			return nil, nil, fmt.Errorf("l2 read many: %w", err)
		}
	}
	if len(ks) == 0 {
		return nil, nil, nil
	}
	cmds := make([]*redis.Cmd, len(ks))
	run := func(ctx context.Context, sha bool) error {
		pipe := s.rdb.Pipeline()
		for i, k := range ks {
			tag := s.tag(k)
			keys := s.scriptKeys(k, tag)
			args := s.readArgs(tokens[i], flagTTL, c, tag)
			if sha {
				cmds[i] = readOrClaimScript.EvalSha(ctx, pipe, keys, args...)
			} else {
				cmds[i] = readOrClaimScript.Eval(ctx, pipe, keys, args...)
			}
		}
		_, err := pipe.Exec(ctx)
		var reply redis.Error
		if errors.As(err, &reply) {
			// An error reply of one command: reported per key below.
			return nil
		}
		return err
	}
	err := s.do(ctx, func(ctx context.Context) error {
		if err := run(ctx, true); err != nil {
			return err
		}
		for _, cmd := range cmds {
			if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
				// The script cache was flushed (R23): send the script itself.
				return run(ctx, false)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("l2 read many: %w", err)
	}
	reads := make([]Read, len(ks))
	errs := make([]error, len(ks))
	for i, cmd := range cmds {
		reply, err := cmd.Result()
		if err != nil {
			errs[i] = fmt.Errorf("l2 read many: %w", err)
			continue
		}
		reads[i], errs[i] = parseRead(reply)
	}
	return reads, errs, nil
}
