package tier

// Source says where a Get's value came from.
type Source uint8

const (
	// SourceNone: no value (the Get failed before any tier answered).
	SourceNone Source = iota
	// SourceL1: this node's memory.
	SourceL1
	// SourceL2: Redis.
	SourceL2
	// SourceFetch: Fetch, under a claim; the value was offered to both
	// tiers (a fill that an invalidation refused still counts here).
	SourceFetch
	// SourceUncached: Fetch, without a claim, caching nothing: Redis was
	// unreachable, a wait for another claimant ran out, the loser policy
	// said so, or the caller asked to bypass the cache.
	SourceUncached
)

func (s Source) String() string {
	switch s {
	case SourceNone:
		return "none"
	case SourceL1:
		return "l1"
	case SourceL2:
		return "l2"
	case SourceFetch:
		return "fetch"
	case SourceUncached:
		return "uncached"
	}
	return "unknown"
}

// ReadInfo describes how a Get was answered: pass Info(&ri) to Get.
type ReadInfo struct {
	// Source is the tier that answered.
	Source Source
	// Stale reports a permitted-stale value: one past its FreshFor served
	// while a refresh runs (stale-while-revalidate), one past its TTL served
	// because the refresh failed (fail-safe, with ErrStale), or one served
	// to a loser under LoserServeStale. Counted in Counts.StaleServed, apart
	// from fresh hits.
	Stale bool
	// Shared reports that another Get's load on this node answered this
	// one (in-process single flight).
	Shared bool
	// Negative reports a cached "not found" (Config.NotFoundTTL).
	Negative bool
}

// GetOption changes one Get. Options are values: passing them does not
// allocate.
type GetOption interface{ applyGet(getOptions) getOptions }

type getOptions struct {
	info    *ReadInfo
	bypass  bool
	refresh bool
}

type infoOption struct{ p *ReadInfo }

func (o infoOption) applyGet(g getOptions) getOptions {
	g.info = o.p
	return g
}

// Info makes Get report how it was answered in *ri.
func Info(ri *ReadInfo) GetOption { return infoOption{ri} }

type flagOption uint8

const (
	optBypass flagOption = iota + 1
	optRefresh
)

func (o flagOption) applyGet(g getOptions) getOptions {
	switch o {
	case optBypass:
		g.bypass = true
	case optRefresh:
		g.refresh = true
	}
	return g
}

// Bypass makes Get read the source of truth and neither read nor fill
// either tier (cacheme's skip).
func Bypass() GetOption { return optBypass }

// Refresh makes Get fetch now, as a claimed and fenced fill like any other,
// and return the fetched value, even if a fresh one is cached. If another
// claimant is already fetching the key, Get waits for its value instead.
func Refresh() GetOption { return optRefresh }
