package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// answer is what a server answered.
type answer struct {
	status int
	cache  string // X-Cache: which tier answered
}

// get asks server n for path and decodes a 200 answer's JSON into v.
func (s *shop) get(ctx context.Context, n int, path string, v any) (answer, error) {
	return s.do(ctx, n, http.MethodGet, path, nil, v)
}

// do sends a request with body (JSON, if not nil) to server n and decodes
// a 200 answer's JSON into v. Any other status is returned, not an error;
// an error is a request that got no answer, or an answer that did not
// decode.
func (s *shop) do(ctx context.Context, n int, method, path string, body, v any) (answer, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return answer{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.procs[n].url+path, rd)
	if err != nil {
		return answer{}, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("%s %s on server %d: %w", method, path, n, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, fmt.Errorf("%s %s on server %d: %w", method, path, n, err)
	}
	a := answer{status: resp.StatusCode, cache: resp.Header.Get("X-Cache")}
	if a.status == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			return a, fmt.Errorf("%s %s on server %d: %w in %q", method, path, n, err, b)
		}
	}
	return a, nil
}
