package tier_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tier"
)

type User struct {
	ID   int64
	Name string
}

// db stands for the source of truth.
var db = map[int64]User{1: {ID: 1, Name: "Ada"}, 2: {ID: 2, Name: "Grace"}}

// A Node per process, a Cache per kind of object.
func ExampleNewNode() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()

	node, err := tier.NewNode(ctx, rdb, tier.NodeConfig{L1MaxBytes: 32 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	fmt.Println("node ready")
	// Output: node ready
}

// New declares one kind of object: its namespace, its source and its
// lifetimes.
func ExampleNew() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()

	users, err := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-new-users",
		Fetch: func(ctx context.Context, id int64) (User, error) {
			u, ok := db[id]
			if !ok {
				return User{}, tier.ErrNotFound
			}
			return u, nil
		},
		TTL:   10 * time.Minute,
		L1TTL: 30 * time.Second,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	u, err := users.Get(ctx, 1)
	fmt.Println(u.Name, err)
	// Output: Ada <nil>
}

// Get reads through both tiers; the source is read once.
func ExampleCache_Get() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()

	reads := 0
	users, _ := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-get-users",
		Fetch: func(ctx context.Context, id int64) (User, error) {
			reads++
			u, ok := db[id]
			if !ok {
				return User{}, fmt.Errorf("user %d: %w", id, tier.ErrNotFound)
			}
			return u, nil
		},
	})
	for range 3 {
		u, _ := users.Get(ctx, 2)
		fmt.Println(u.Name)
	}
	_, err := users.Get(ctx, 99)
	fmt.Println(errors.Is(err, tier.ErrNotFound), "source reads:", reads)
	// Output:
	// Grace
	// Grace
	// Grace
	// true source reads: 2
}

// Invalidate after writing the source: the next read, on this node at
// once, gets the new value.
func ExampleCache_Invalidate() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()

	names := map[string]string{"greeting": "hello"}
	texts, _ := tier.New(node, tier.Config[string, string]{
		Namespace: "example-invalidate",
		Fetch: func(ctx context.Context, key string) (string, error) {
			return names[key], nil
		},
	})
	v, _ := texts.Get(ctx, "greeting")
	fmt.Println(v)

	names["greeting"] = "bonjour" // the write to the source of truth
	if err := texts.Invalidate(ctx, "greeting"); err != nil {
		fmt.Println(err)
	}
	v, _ = texts.Get(ctx, "greeting")
	fmt.Println(v)
	// Output:
	// hello
	// bonjour
}

// Set writes through after the source was updated.
func ExampleCache_Set() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()

	texts, _ := tier.New(node, tier.Config[string, string]{
		Namespace: "example-set",
		Fetch: func(ctx context.Context, key string) (string, error) {
			return "", errors.New("not reached: Set filled Redis")
		},
	})
	if err := texts.Set(ctx, "motd", "all systems go"); err != nil {
		fmt.Println(err)
	}
	v, err := texts.Get(ctx, "motd")
	fmt.Println(v, err)
	// Output: all systems go <nil>
}

// GetMany reads many keys with one Redis round trip for all that L1 does
// not hold; FetchMany reads what neither tier holds in one call, and says
// which keys the source does not have with tier.Missing. Such a key is
// absent from the result.
func ExampleCache_GetMany() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	users, _ := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-many-users",
		Fetch: func(ctx context.Context, id int64) (User, error) {
			return User{}, tier.ErrNotFound // FetchMany answers for GetMany
		},
		FetchMany: func(ctx context.Context, ids []int64) (map[int64]User, error) {
			found := map[int64]User{}
			for _, id := range ids {
				if u, ok := db[id]; ok {
					found[id] = u
				}
			}
			return found, tier.Missing(ids, found)
		},
	})
	got, err := users.GetMany(ctx, []int64{1, 2, 3})
	fmt.Println(len(got), got[1].Name, got[2].Name, err)
	// Output: 2 Ada Grace <nil>
}

// With FreshFor, a value past it is served at once while one fetch for the
// whole fleet refreshes it; with MaxStale, a value whose refresh fails is
// served with ErrStale rather than an error alone.
func ExampleConfig_freshness() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	users, _ := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-fresh-users",
		Fetch: func(ctx context.Context, id int64) (User, error) {
			return db[id], nil
		},
		FreshFor:     time.Minute,      // fresh for a minute,
		TTL:          10 * time.Minute, // then served while refreshed, up to 10 minutes,
		MaxStale:     time.Hour,        // then served only if the source fails, up to an hour more
		FetchTimeout: time.Second,
		NotFoundTTL:  30 * time.Second,
	})
	var ri tier.ReadInfo
	u, err := users.Get(ctx, 1, tier.Info(&ri))
	if errors.Is(err, tier.ErrStale) {
		fmt.Println("the source is failing; serving the kept value")
	}
	fmt.Println(u.Name, ri.Source, ri.Stale)
	// Output: Ada fetch false
}

// GetOrFetch names the source of one call; concurrent callers of the key
// share it, as they share Fetch.
func ExampleCache_GetOrFetch() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	users, _ := tier.New(node, tier.Config[int64, User]{Namespace: "example-getorfetch-users"})
	u, err := users.GetOrFetch(ctx, 2, func(ctx context.Context, id int64) (User, error) {
		return db[id], nil
	})
	fmt.Println(u.Name, err)
	// Output: Grace <nil>
}

// Memoize caches a function of several arguments for the whole fleet; a
// struct of strings, integers, booleans and times is its own key.
func ExampleMemoize() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	type query struct {
		Prefix string
		Limit  int
	}
	search := func(ctx context.Context, q query) ([]string, error) {
		var out []string
		for _, id := range []int64{1, 2} {
			if name := db[id].Name; len(out) < q.Limit && len(name) >= len(q.Prefix) && name[:len(q.Prefix)] == q.Prefix {
				out = append(out, name)
			}
		}
		return out, nil
	}
	byPrefix, _ := tier.Memoize(node, tier.Config[query, []string]{Namespace: "example-memoize", TTL: time.Minute}, search)
	names, err := byPrefix.Get(ctx, query{Prefix: "G", Limit: 10})
	fmt.Println(names, err)
	// Output: [Grace] <nil>
}

// GetList answers in the order asked; a key the source lacks has the zero
// value, and ErrNotFound in the *KeyErrors.
func ExampleCache_GetList() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	users, _ := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-list-users",
		FetchMany: func(ctx context.Context, ids []int64) (map[int64]User, error) {
			found := map[int64]User{}
			for _, id := range ids {
				if u, ok := db[id]; ok {
					found[id] = u
				}
			}
			return found, tier.Missing(ids, found)
		},
	})
	list, err := users.GetList(ctx, []int64{2, 3, 1})
	var ke *tier.KeyErrors[int64]
	fmt.Println(list[0].Name, list[1].Name == "", list[2].Name, errors.As(err, &ke) && errors.Is(ke.Errs[3], tier.ErrNotFound))
	// Output: Grace true Ada true
}

// One write that changes an object and the lists it is in invalidates
// both, in one round trip and one message.
func ExampleNode_Invalidate() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	users, _ := tier.New(node, tier.Config[int64, User]{
		Namespace: "example-invalidate-users",
		Fetch:     func(ctx context.Context, id int64) (User, error) { return db[id], nil },
		Groups:    func(id int64, u User) []string { return []string{"team:1"} },
	})
	_, _ = users.Get(ctx, 1)
	err := node.Invalidate(ctx, tier.KeysOf(users, 1), tier.Groups("team:1"))
	fmt.Println(err)
	// Output: <nil>
}

// A Resource is a whole data set in memory on every node, loaded once for
// the fleet and reloaded every ReloadEvery.
func ExampleNewResource() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis})
	defer rdb.Close()
	node, _ := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	defer node.Close()
	rates, err := tier.NewResource(node, tier.ResourceConfig[string, float64]{
		Name:        "example-rates",
		ReloadEvery: 5 * time.Minute,
		Load: func(ctx context.Context) (map[string]float64, error) {
			return map[string]float64{"EUR": 1.0, "USD": 1.08}, nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := rates.Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}
	usd, ok := rates.Get("USD")
	fmt.Println(usd, ok, rates.Len())
	// Output: 1.08 true 2
}
