package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Stats is what a server's INFO cpu and commandstats sections say: the
// CPU time, user and system, its process has used since it started (the
// difference of two readings around a fixed number of operations is their
// cost to Redis, a fleet's capacity figure), and for each command, by its
// commandstats name ("get", "evalsha", "config|resetstat"), its calls and
// the time they took since the last CONFIG RESETSTAT. A command that a
// script calls is counted both on its own and in the script's time.
type Stats struct {
	CPU      time.Duration
	Commands map[string]CommandStats
}

// CommandStats is one command's line of INFO commandstats.
type CommandStats struct {
	Calls int64
	Time  time.Duration
}

// ReadStats reads INFO cpu and commandstats through rdb, in one command.
func ReadStats(ctx context.Context, rdb *redis.Client) (Stats, error) {
	info, err := rdb.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return Stats{}, fmt.Errorf("INFO cpu commandstats on %s: %w", rdb.Options().Addr, err)
	}
	st, err := ParseStats(info)
	if err != nil {
		return Stats{}, fmt.Errorf("INFO cpu commandstats on %s: %w", rdb.Options().Addr, err)
	}
	return st, nil
}

// ParseStats parses the text of INFO's cpu and commandstats sections. It
// reports a line of either that it cannot read, and the absence of the
// CPU lines.
func ParseStats(info string) (Stats, error) {
	st := Stats{Commands: make(map[string]CommandStats)}
	cpuLines := 0
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		name, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case name == "used_cpu_sys" || name == "used_cpu_user":
			// used_cpu_user:0.123456
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil || !(secs >= 0 && secs < 1e9) { // not NaN, nor past a Duration
				return Stats{}, fmt.Errorf("cpu line %q", line)
			}
			st.CPU += time.Duration(secs * float64(time.Second))
			cpuLines++
		case strings.HasPrefix(name, "cmdstat_"):
			// cmdstat_get:calls=3,usec=5,usec_per_call=1.67,rejected_calls=0,failed_calls=0
			var cs CommandStats
			for field := range strings.SplitSeq(v, ",") {
				k, n, _ := strings.Cut(field, "=")
				if k != "calls" && k != "usec" {
					continue
				}
				i, err := strconv.ParseInt(n, 10, 64)
				if err != nil || i < 0 || i > int64(time.Duration(1<<62)/time.Microsecond) {
					return Stats{}, fmt.Errorf("commandstats line %q", line)
				}
				if k == "calls" {
					cs.Calls = i
				} else {
					cs.Time = time.Duration(i) * time.Microsecond
				}
			}
			st.Commands[strings.TrimPrefix(name, "cmdstat_")] = cs
		}
	}
	if cpuLines == 0 {
		return Stats{}, fmt.Errorf("no used_cpu_sys nor used_cpu_user in %q", info)
	}
	return st, nil
}
