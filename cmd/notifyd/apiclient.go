package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"
)

// apiClient calls a notifyd API the way another backend would: a bearer key,
// JSON bodies, an optional Idempotency-Key. bench and chaos drive their child
// processes through it.
type apiClient struct {
	base, key string
	http      *http.Client
}

func newAPIClient(base, key string) *apiClient {
	return &apiClient{base: base, key: key, http: &http.Client{Timeout: 2 * time.Minute}}
}

// do sends one request and reads the whole answer.
func (c *apiClient) do(ctx context.Context, method, path, idemKey string, body []byte) (status int, header http.Header, raw []byte, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw, err
}
