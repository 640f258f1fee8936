//go:build !unix

package sim

import "time"

// readAnchor has no system-wide monotonic clock to read: stamps are on
// this process's clock alone, which is all a run in one process needs.
func readAnchor() anchor { return anchor{at: time.Now()} }
