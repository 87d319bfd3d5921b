package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// ChallTestSrv drives pebble-challtestsrv's management API: the HTTP-01
// responses it serves on CERTFLEET_HTTP01_PORT (where Pebble validates) and
// the TXT records its DNS server answers (Pebble's resolver). Safe for
// concurrent use.
type ChallTestSrv struct {
	URL    string       // management API base, Settings.ChallTestSrvURL
	Client *http.Client // nil means http.DefaultClient
}

// AddHTTP01 makes challtestsrv answer /.well-known/acme-challenge/token with keyAuth.
func (c ChallTestSrv) AddHTTP01(ctx context.Context, token, keyAuth string) error {
	return c.post(ctx, "/add-http01", map[string]string{"token": token, "content": keyAuth})
}

// DelHTTP01 removes a response added by AddHTTP01.
func (c ChallTestSrv) DelHTTP01(ctx context.Context, token string) error {
	return c.post(ctx, "/del-http01", map[string]string{"token": token})
}

// AddA makes challtestsrv's DNS answer A queries for host (no trailing dot
// needed) with addrs instead of its default 127.0.0.1: a test points its
// names at its own loopback address to have Pebble validate HTTP-01 against
// its own responder on HTTP01Port there. Each user takes its own address so
// packages testing in parallel never share a listener: see HTTP01Addrs.
func (c ChallTestSrv) AddA(ctx context.Context, host string, addrs ...string) error {
	return c.post(ctx, "/add-a", map[string]any{"host": host, "addresses": addrs})
}

// Loopback addresses reserved for HTTP-01 responders that Pebble validates
// against (port Settings.HTTP01Port; 127.0.0.1 is challtestsrv's own).
const (
	HTTP01AddrPipelineTests  = "127.0.0.2" // pipeline package tests
	HTTP01AddrWorkerTests    = "127.0.0.3" // cmd/issuer-worker process tests
	HTTP01AddrDemo           = "127.0.0.4" // make run
	HTTP01AddrSchedulerTests = "127.0.0.5" // cmd/scheduler process tests
)

// SetTXT adds a TXT record value for a fully qualified name (with trailing dot).
func (c ChallTestSrv) SetTXT(ctx context.Context, fqdn, value string) error {
	return c.post(ctx, "/set-txt", map[string]string{"host": fqdn, "value": value})
}

// ClearTXT removes every TXT value of a fully qualified name.
func (c ChallTestSrv) ClearTXT(ctx context.Context, fqdn string) error {
	return c.post(ctx, "/clear-txt", map[string]string{"host": fqdn})
}

func (c ChallTestSrv) post(ctx context.Context, path string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	hc := c.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("challtestsrv %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("challtestsrv %s: %s: %s", path, resp.Status, msg)
	}
	return nil
}
