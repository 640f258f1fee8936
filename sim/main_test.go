package sim

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// quiet drops go-redis's own log lines (dial failures while a fault has
// Redis down on purpose).
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	NodeProcess() // a run of node processes starts this binary as its nodes
	redis.SetLogger(quiet{})
	if os.Getenv(parentEnv) == "1" {
		os.Exit(parentOfNodes())
	}
	goleak.VerifyTestMain(m)
	os.Exit(0)
}
