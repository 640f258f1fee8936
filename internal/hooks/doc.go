// Package hooks holds the test-only interleaving points of a tier.Node. A
// production Node has none (a nil *Points); tests install them through the
// tier package's test-only constructor to drive the exact interleavings of
// docs/RACES.md, and to break the protocol on purpose for the negative controls.
// Nothing here is public API.
package hooks
