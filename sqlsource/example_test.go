package sqlsource_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

type Book struct {
	ID     int64
	Title  string
	Author string
}

// A cache of a PostgreSQL table: the Table's Fetch and FetchMany are the
// cache's. (examplePG is a DSN whose search_path is a schema of the test
// run's own.)
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", examplePG)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, `
		CREATE TABLE books (id bigint PRIMARY KEY, title text NOT NULL, author text NOT NULL);
		INSERT INTO books VALUES (1, 'Dune', 'Herbert'), (2, 'Emma', 'Austen'), (3, 'Ulysses', 'Joyce')`)
	if err != nil {
		fmt.Println(err)
		return
	}

	books, err := sqlsource.New(sqlsource.Config[int64, Book]{
		DB:      db,
		Dialect: sqlsource.Postgres,
		Table:   "books",
		Key:     "id",
		Columns: []string{"id", "title", "author"},
		Scan: func(row sqlsource.Row) (int64, Book, error) {
			var b Book
			err := row.Scan(&b.ID, &b.Title, &b.Author)
			return b.ID, b, err
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis, ContextTimeoutEnabled: true})
	defer rdb.Close()
	node, err := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	cache, err := tier.New(node, tier.Config[int64, Book]{
		Namespace: "example-books",
		Fetch:     books.Fetch,     // SELECT … WHERE "id" = $1
		FetchMany: books.FetchMany, // SELECT … WHERE "id" = ANY($1)
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	b, err := cache.Get(ctx, 1)
	fmt.Println(b.Title, err)
	_, err = cache.Get(ctx, 42)
	fmt.Println("42 not found:", errors.Is(err, tier.ErrNotFound))
	many, err := cache.GetMany(ctx, []int64{1, 2, 3, 42})
	fmt.Println(len(many), many[2].Author, many[3].Title, err)

	all, err := books.LoadAll(ctx) // the whole table, as one resource
	fmt.Println(len(all), err)
	// Output:
	// Dune <nil>
	// 42 not found: true
	// 3 Austen Ulysses <nil>
	// 3 <nil>
}
