package sqlsource

import "errors"

var (
	// ErrConfig reports an invalid Config: a missing field, a name that
	// cannot be quoted for the Dialect, a BatchSize out of range. New
	// returns it; no query ever does.
	ErrConfig = errors.New("sqlsource: invalid config")
	// ErrScan reports a row that did not scan: Config.Scan returned an
	// error (the error also wraps it) or panicked (the error also wraps
	// tier.ErrPanic, with the panic value in the message).
	ErrScan = errors.New("sqlsource: row did not scan")
	// ErrDuplicateKey reports two rows with the same key: Fetch, FetchMany
	// and LoadAll return nothing but this error, which names the key.
	ErrDuplicateKey = errors.New("sqlsource: duplicate key")
	// ErrKeyMismatch reports a row whose key, as Config.Scan returned it,
	// is not a key that was asked for: the key column compares equal to a
	// value that Go does not (a case-insensitive or space-padding
	// collation, a conversion between types), or Scan returned the wrong
	// key. Caching such a row under the key asked for would leave it cached
	// after a write to the row's own key had invalidated that key.
	ErrKeyMismatch = errors.New("sqlsource: row key is not a key asked for")
	// ErrTooManyRows reports a LoadAll that found more rows than
	// Config.MaxRows.
	ErrTooManyRows = errors.New("sqlsource: too many rows")
)
