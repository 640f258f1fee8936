package sqlsource_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Addresses of the Example functions' servers, set by TestMain: a private
// Redis, and the machine's PostgreSQL with search_path set to a schema of
// this test process's own, so that the examples' tables are theirs alone.
var (
	exampleRedis string
	examplePG    string
)

func TestMain(m *testing.M) {
	// Scan panics are logged to slog.Default(); the tests that provoke them
	// look at errors, not logs.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := sql.Open("pgx", pgDSN)
	if err == nil {
		err = admin.PingContext(ctx)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sqlsource tests: %v\n%s\n", err, pgHint)
		return 1
	}
	schema := "sqlsource_examples_" + randomHex()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		fmt.Fprintf(os.Stderr, "sqlsource tests: creating schema %s: %v\n", schema, err)
		return 1
	}
	examplePG = pgDSN + "&search_path=" + schema

	addr, stop, err := redistest.StartForMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	exampleRedis = addr

	code := m.Run()

	stop()
	// A fresh context: the tests may have used up the first one's time.
	dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
	defer dcancel()
	if _, err := admin.ExecContext(dctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
		fmt.Fprintf(os.Stderr, "sqlsource tests: dropping schema %s: %v\n", schema, err)
		code = 1
	}
	_ = admin.Close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	return code
}

// randomHex returns 8 random hex digits, for names no other run uses.
func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
