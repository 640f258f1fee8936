package wait_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/wait"
)

// Sleep returns nil after its duration, and ctx's error at once when ctx is
// already done.
func TestSleep(t *testing.T) {
	if err := wait.Sleep(context.Background(), time.Microsecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := wait.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep with a done ctx = %v", err)
	}
}
