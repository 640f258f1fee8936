package interleave

import (
	"testing"
	"time"
)

// Row is one row of a benchmark: Op runs its i-th operation.
type Row struct {
	Name string
	Op   func(i int) error
}

// Run runs every row's Op once per iteration of b (b.Loop), in turn,
// starting each iteration with the next row, and returns each row's total
// time and the number of iterations. An Op that fails fails b.
func Run(b *testing.B, rows ...Row) (spent []time.Duration, iterations int) {
	b.Helper()
	spent = make([]time.Duration, len(rows))
	for i := 0; b.Loop(); i++ {
		for k := range rows {
			r := (i + k) % len(rows)
			start := time.Now()
			if err := rows[r].Op(i); err != nil {
				b.Fatalf("%s: %v", rows[r].Name, err)
			}
			spent[r] += time.Since(start)
		}
		iterations++
	}
	return spent, iterations
}
