package pgnotify_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// quiet drops go-redis's own log lines; the library reports through its
// slog.Logger.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	// Listeners and nodes log to slog.Default() unless told otherwise; the
	// tests that look at what they log give them a logger of their own.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	conn, err := pgx.Connect(ctx, pgDSN)
	if err == nil {
		_ = conn.Close(ctx)
	}
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgnotify tests: PostgreSQL did not answer: %v\n%s\n", err, pgHint)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
