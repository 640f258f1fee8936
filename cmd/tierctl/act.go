package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tier"
)

// actOptions configure invalidate, invalidate-group and flush.
type actOptions struct {
	prefix string
	json   bool
	// yes confirms the action; without it the command only says what it
	// would do and returns errRefused.
	yes bool
	// logger receives the node's warnings; nil discards them.
	logger *slog.Logger
}

// actReport is what an action did or would do; its JSON field names are
// stable.
type actReport struct {
	Action    string   `json:"action"`
	Prefix    string   `json:"prefix"`
	Namespace string   `json:"namespace,omitempty"`
	Keys      []string `json:"keys,omitempty"`
	Groups    []string `json:"groups,omitempty"`
	// Done is false when the action was refused for want of -yes.
	Done bool `json:"done"`
}

// errNoFetch is the Fetch of the Cache an invalidation needs: tierctl
// never reads through it.
var errNoFetch = errors.New("tierctl reads nothing from the source")

// invalidateKeys evicts keys of namespace from both tiers on every node,
// through Cache.Invalidate.
func invalidateKeys(ctx context.Context, rdb redis.UniversalClient, o actOptions, namespace string, keys []string, w io.Writer) error {
	r := actReport{Action: "invalidate", Namespace: namespace, Keys: keys}
	return act(ctx, rdb, o, r, w, func(ctx context.Context, n *tier.Node) error {
		c, err := tier.New(n, tier.Config[string, []byte]{
			Namespace: namespace,
			Fetch:     func(context.Context, string) ([]byte, error) { return nil, errNoFetch },
		})
		if err != nil {
			return err
		}
		return c.Invalidate(ctx, keys...)
	})
}

// invalidateGroups invalidates groups on every node, through
// Node.InvalidateGroup.
func invalidateGroups(ctx context.Context, rdb redis.UniversalClient, o actOptions, groups []string, w io.Writer) error {
	r := actReport{Action: "invalidate-group", Groups: groups}
	return act(ctx, rdb, o, r, w, func(ctx context.Context, n *tier.Node) error {
		return n.InvalidateGroup(ctx, groups...)
	})
}

// flush drops every node's L1, through Node.Flush.
func flush(ctx context.Context, rdb redis.UniversalClient, o actOptions, w io.Writer) error {
	r := actReport{Action: "flush"}
	return act(ctx, rdb, o, r, w, func(ctx context.Context, n *tier.Node) error {
		return n.Flush(ctx)
	})
}

// act runs do on a node of its own, if o.yes, and reports.
func act(ctx context.Context, rdb redis.UniversalClient, o actOptions, r actReport, w io.Writer, do func(context.Context, *tier.Node) error) error {
	if o.prefix == "" {
		o.prefix = tier.DefaultPrefix
	}
	r.Prefix = o.prefix
	if o.yes {
		logger := o.logger
		if logger == nil {
			logger = slog.New(slog.DiscardHandler)
		}
		n, err := tier.NewNode(ctx, rdb, tier.NodeConfig{Prefix: o.prefix, Logger: logger})
		if err != nil {
			return fmt.Errorf("%s: %w", r.Action, err)
		}
		err = do(ctx, n)
		_ = n.Close() // always nil
		if err != nil {
			return fmt.Errorf("%s: %w", r.Action, err)
		}
		r.Done = true
	}
	if o.json {
		if err := json.NewEncoder(w).Encode(r); err != nil {
			return err
		}
	} else if _, err := io.WriteString(w, describe(r)); err != nil {
		return err
	}
	if !r.Done {
		return errRefused
	}
	return nil
}

// describe says in words what r did or would do.
func describe(r actReport) string {
	var what string
	switch r.Action {
	case "invalidate":
		keys := make([]string, len(r.Keys))
		for i, k := range r.Keys {
			keys[i] = show(k)
		}
		what = fmt.Sprintf("invalidate %d key(s) of namespace %s (%s) in Redis and in every node's L1", len(r.Keys), show(r.Namespace), strings.Join(keys, " "))
	case "invalidate-group":
		groups := make([]string, len(r.Groups))
		for i, g := range r.Groups {
			groups[i] = show(g)
		}
		what = fmt.Sprintf("invalidate %d group(s) (%s): every member, in Redis and in every node's L1", len(r.Groups), strings.Join(groups, " "))
	case "flush":
		what = "drop every node's L1 (Redis is left as it is)"
	}
	if r.Done {
		return fmt.Sprintf("done: %s, prefix %s\n", what, show(r.Prefix))
	}
	return fmt.Sprintf("would %s, prefix %s; nothing done: run again with -yes\n", what, show(r.Prefix))
}
