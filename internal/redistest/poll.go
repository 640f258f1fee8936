package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// awaitTimeout bounds every wait for a cluster or a sentinel deployment
	// to reach a state. It is generous because gossip, elections and
	// replica syncs run slower on a loaded machine; the waits poll, so they
	// return as soon as the state is reached.
	awaitTimeout = 60 * time.Second
	// pollInterval is the pause between two looks at the state.
	pollInterval = 20 * time.Millisecond
	// queryTimeout bounds one command of a look at the state, so that a
	// paused member slows a look down instead of hanging it.
	queryTimeout = time.Second
	// reportTailLines is how many log lines of each process a failure
	// report shows.
	reportTailLines = 8
)

// newAdmin returns a client that runs one command at a time on one server,
// for the package's own looks at the state: no retries, so a look sees an
// error as it happened, and context deadlines honoured, so a paused server
// costs a look queryTimeout and no more.
func newAdmin(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		DialTimeout:           clientTimeout,
		ReadTimeout:           clientTimeout,
		WriteTimeout:          clientTimeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		PoolSize:              2,
	})
}

// query runs one command on c within queryTimeout.
func query(c *redis.Client, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	return c.Do(ctx, args...).Result()
}

// queryString runs one command whose reply is a string (INFO, CLUSTER NODES).
func queryString(c *redis.Client, args ...any) (string, error) {
	v, err := query(c, args...)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%v answered %T, not a string", args, v)
	}
	return s, nil
}

// await polls check until it returns nil. After awaitTimeout it fails t with
// what was awaited, check's last error and report(), a picture of the
// processes involved.
func await(t testing.TB, what string, check func() error, report func() string) {
	t.Helper()
	if err := waitFor(context.Background(), what, check, report); err != nil {
		t.Fatal(err)
	}
}

// waitFor is await returning its failure: it polls check until it returns
// nil, ctx is done, or awaitTimeout passes.
func waitFor(ctx context.Context, what string, check func() error, report func() string) error {
	start := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Since(start) > awaitTimeout {
			return fmt.Errorf("redistest: %s: not reached after %v: %v\n%s", what, awaitTimeout, err, report())
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("redistest: %s: %w (last: %v)", what, ctx.Err(), err)
		}
	}
}

// infoFields parses the "key:value" lines of INFO or CLUSTER INFO.
func infoFields(s string) map[string]string {
	m := make(map[string]string)
	for line := range strings.SplitSeq(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && !strings.HasPrefix(k, "#") {
			m[k] = v
		}
	}
	return m
}

// replyMap turns one reply describing an instance (SENTINEL MASTER, an
// element of SENTINEL REPLICAS) into field names and values: a map in RESP3,
// a flat list of names and values in RESP2.
func replyMap(v any) (map[string]string, error) {
	m := make(map[string]string)
	switch r := v.(type) {
	case map[any]any:
		for k, v := range r {
			m[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	case []any:
		if len(r)%2 != 0 {
			return nil, fmt.Errorf("odd-length reply %v", r)
		}
		for i := 0; i < len(r); i += 2 {
			m[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
		}
	default:
		return nil, fmt.Errorf("reply %T is neither a map nor a list", v)
	}
	return m, nil
}

// replyMaps is replyMap for a list of instances (SENTINEL REPLICAS,
// SENTINEL SENTINELS).
func replyMaps(v any) ([]map[string]string, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("reply %T is not a list", v)
	}
	out := make([]map[string]string, 0, len(list))
	for _, e := range list {
		m, err := replyMap(e)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// logTail is the end of the server's log, for failure reports.
func (s *Server) logTail(lines int) string {
	return tail(s.logPath, 0, lines)
}

// running reports whether the server's process is up (it may be paused).
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && s.proc.alive()
}
