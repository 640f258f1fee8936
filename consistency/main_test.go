package consistency_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a concurrent test leaks a goroutine.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
