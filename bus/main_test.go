package bus_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine running: every
// Publisher and Subscriber must stop its goroutines in Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
