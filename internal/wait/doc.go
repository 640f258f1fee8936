// Package wait holds the library's one way to pause background work: a
// sleep that ends early, with ctx's error, when ctx is done.
package wait
