package interleave_test

import (
	"slices"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/interleave"
)

// TestRun proves that every row runs once per iteration, each iteration
// starting with the next row, and that a row's time counts its own
// operations: the row that sleeps a millisecond each time has at least a
// millisecond an iteration.
func TestRun(t *testing.T) {
	var (
		order []string
		spent []time.Duration
		n     int
	)
	rows := []interleave.Row{
		{Name: "a", Op: func(i int) error { order = append(order, "a"); return nil }},
		{Name: "b", Op: func(i int) error { order = append(order, "b"); time.Sleep(time.Millisecond); return nil }},
		{Name: "c", Op: func(i int) error { order = append(order, "c"); return nil }},
	}
	testing.Benchmark(func(b *testing.B) {
		order = order[:0]
		spent, n = interleave.Run(b, rows...)
	})
	if n == 0 || len(order) != 3*n {
		t.Fatalf("%d iterations ran %d operations; want 3 each", n, len(order))
	}
	for i := range n {
		want := []string{"a", "b", "c", "a", "b"}[i%3 : i%3+3]
		if got := order[3*i : 3*i+3]; !slices.Equal(got, want) {
			t.Fatalf("iteration %d ran %v; want %v", i, got, want)
		}
	}
	if len(spent) != 3 || spent[1] < time.Duration(n)*time.Millisecond {
		t.Fatalf("spent %v over %d iterations; want b's at least 1ms each", spent, n)
	}
}
