// Package interleave runs the rows of a benchmark in turn within every
// iteration, so that rows compared with one another share every moment of
// the run: on a machine whose speed drifts by the minute, their ratios hold
// where those of separate sub-benchmarks do not.
//
// Guarantee: every row runs exactly once per iteration, each iteration
// starting with the next row, so that what one row leaves running (a
// message to deliver, a worker to wake) falls on every row alike; each
// row's time is that of its own operations alone.
package interleave
