// Package sqlsource reads a cache's objects from a table through
// database/sql: a [Table]'s Fetch and FetchMany are a tier.Config's Fetch
// and FetchMany, and its LoadAll reads the whole table as one resource.
//
// A [Config] names the table, its key column, the columns to read and a
// Scan function that turns a row into a key and a value; [New] quotes every
// name for the [Dialect] and refuses, with [ErrConfig], one that cannot be
// quoted, so that no query fails for a name. Fetch reads one key with
// `WHERE key = $1`. FetchMany reads many in one statement per batch: on
// [Postgres] with `WHERE key = ANY($1)`, the keys in one array parameter,
// so the statement's text never changes; on [MySQL] (and MariaDB) with
// `WHERE key IN (?, ?, …)`, at most Config.BatchSize keys to a statement.
// The package imports no driver: bring your own (pgx's stdlib for
// PostgreSQL, go-sql-driver/mysql for MySQL and MariaDB are the ones it is
// tested with).
//
// # Guarantee
//
// A Table answers with exactly the rows the database holds for the keys
// asked for, or with an error and nothing else:
//
//   - "Not found" means the database returned no row for the key: Fetch
//     says it with an error wrapping tier.ErrNotFound, FetchMany with that
//     error for the key in a *tier.KeyErrors (tier.Missing), beside the
//     values it found. An error of any other kind never looks like "not
//     found": FetchMany and LoadAll return a map only when every statement
//     succeeded and every row scanned.
//   - A value is returned under its row's own key. Scan's key must be one
//     that was asked for ([ErrKeyMismatch] otherwise): a key column that
//     compares equal to a value Go does not (a case-insensitive or
//     space-padding collation, a conversion between types) would otherwise
//     put a row in the cache under a key that a write to that row never
//     invalidates.
//   - Two rows for one key are an error ([ErrDuplicateKey]) naming the key,
//     never one of the two chosen at random.
//   - A row that does not scan is an error ([ErrScan]) naming the table,
//     the row and the columns. A panic in Scan, or in the Scan method of a
//     destination, is recovered, logged with its stack to Config.Logger and
//     returned as an error wrapping ErrScan and tier.ErrPanic; it never
//     crashes the process. (A panic that database/sql raises itself inside
//     Rows.Scan, from a destination this package cannot wrap, such as a
//     pointer to a pointer to a Scanner, leaves the rows locked, Go issue
//     76465: the call returns its error, and the connection is lost to the
//     pool, with whatever the driver keeps for it, such as
//     go-sql-driver/mysql's goroutine.)
//   - Every call honours ctx, closes its rows and checks their error; a
//     connection that broke is the driver's error, wrapped, and a *sql.DB
//     replaces it for the next call.
//
// # Thread-safety
//
// A Table is immutable and holds no connection: it is safe for concurrent
// use whenever Config.DB is (a *sql.DB is).
package sqlsource
