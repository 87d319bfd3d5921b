package acmeissuer

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/testenv"
)

const token43 = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"

func TestValidToken(t *testing.T) {
	for tok, want := range map[string]bool{
		token43:                    true,
		"a":                        true,
		strings.Repeat("A", 128):   true,
		strings.Repeat("A", 129):   false,
		"":                         false,
		"abc.def":                  false,
		"../etc/passwd":            false,
		"abc/def":                  false,
		"abc=":                     false,
		"abc def":                  false,
		"abc%2F":                   false,
		"\u00e9t\u00e9":            false,
		"abc\x00":                  false,
		"ZXlKaGJHY2lPaUpJVXpJMU5p": true,
	} {
		if got := ValidToken(tok); got != want {
			t.Errorf("ValidToken(%q) = %v", tok, got)
		}
	}
}

func TestChallengeStoreAndHandler(t *testing.T) {
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := NewChallengeStore(d, time.Minute)
	if err := store.Put(ctx, token43, token43+".thumb", "a.certfleet.test"); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "replaced", "old", "b.certfleet.test"); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "replaced", "new", "b.certfleet.test"); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "expired", "stale", "c.certfleet.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `UPDATE acme_http01_challenges SET expires_at = now() - INTERVAL '1 second' WHERE token = 'expired'`); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "bad/token", "x", ""); err == nil {
		t.Error("malformed token stored")
	}

	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "next") })
	srv := httptest.NewServer(HTTP01Handler(store, next))
	defer srv.Close()
	const a, b, c = "a.certfleet.test", "b.certfleet.test", "c.certfleet.test"
	cases := []struct {
		method, host, path string
		status             int
		body               string
	}{
		{"GET", a, HTTP01Path + token43, 200, token43 + ".thumb"},
		{"GET", "A.Certfleet.Test.:80", HTTP01Path + token43, 200, token43 + ".thumb"},
		{"HEAD", a, HTTP01Path + token43, 200, ""},
		{"GET", b, HTTP01Path + token43, 404, ""}, // the token of another name
		{"GET", "", HTTP01Path + token43, 404, ""},
		{"GET", b, HTTP01Path + "replaced", 200, "new"},
		{"GET", c, HTTP01Path + "expired", 404, ""},
		{"GET", a, HTTP01Path + "unknown", 404, ""},
		{"GET", a, HTTP01Path, 404, ""},
		{"GET", a, HTTP01Path + "a.b", 404, ""},
		{"GET", a, HTTP01Path + "a%2Fb", 404, ""},
		{"GET", a, HTTP01Path + strings.Repeat("x", 129), 404, ""},
		{"GET", a, HTTP01Path + token43 + "/more", 404, ""},
		{"POST", a, HTTP01Path + token43, 405, ""},
		{"GET", a, "/healthz", 200, "next"},
	}
	for _, c := range cases {
		req, _ := http.NewRequestWithContext(ctx, c.method, srv.URL+c.path, nil)
		req.Host = c.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || (c.status == 200 && string(body) != c.body) {
			t.Errorf("%s %s (Host %q) = %d %q; want %d %q", c.method, c.path, c.host, resp.StatusCode, body, c.status, c.body)
		}
	}

	if n, err := store.DeleteExpired(ctx); err != nil || n != 1 {
		t.Errorf("DeleteExpired = %d, %v; want 1", n, err)
	}
	if err := store.Delete(ctx, token43); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, token43); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, _, found, err := store.Get(ctx, token43); found || err != nil {
		t.Errorf("after delete: found %v, %v", found, err)
	}
	// A broken database is a 503, not a 404 the CA would count as a failure
	// (a token never served before, so not from the responder's cache).
	d.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+HTTP01Path+"never-served", nil)
	req.Host = b
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("closed database: %d; want 503", resp.StatusCode)
	}
}

// bridgeSolver proves the database-backed HTTP-01 path end to end although
// challtestsrv owns the port Pebble validates: Present stores the challenge
// with HTTP01Solver, fetches it back through HTTP01Handler over HTTP, and
// copies exactly what the handler served into challtestsrv.
type bridgeSolver struct {
	inner     HTTP01Solver
	handler   string // base URL of an httptest server running HTTP01Handler
	chall     testenv.ChallTestSrv
	presented chan string
}

func (b bridgeSolver) Present(ctx context.Context, ch acme.Challenge) error {
	if err := b.inner.Present(ctx, ch); err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.handler+ch.HTTP01ResourcePath(), nil)
	req.Host = ch.Identifier.Value // as the CA asks: the responder checks it
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("handler answered %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	b.presented <- ch.Token
	return b.chall.AddHTTP01(ctx, ch.Token, string(body))
}

func (b bridgeSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	_ = b.chall.DelHTTP01(ctx, ch.Token)
	return b.inner.CleanUp(ctx, ch)
}

func TestObtainHTTP01ThroughChallengeStore(t *testing.T) {
	s := testenv.Require(t)
	if os.Getenv(testenv.EnvPebbleAlwaysValid) == "1" {
		t.Log("Pebble runs with always-valid: validation is not exercised")
	}
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store := NewChallengeStore(d, 0)
	srv := httptest.NewServer(HTTP01Handler(store, nil))
	defer srv.Close()
	bridge := bridgeSolver{inner: HTTP01Solver{store}, handler: srv.URL, chall: testenv.ChallTestSrv{URL: s.ChallTestSrvURL}, presented: make(chan string, 4)}
	iss := newTestIssuer(t, s, d, func(c *Config) { c.Solvers = map[string]acmez.Solver{acme.ChallengeTypeHTTP01: bridge} })
	names := []string{"h1-" + randomSuffix() + ".certfleet.test", "h2-" + randomSuffix() + ".certfleet.test"}
	res, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: names})
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, res, names...)
	if len(bridge.presented) != 2 {
		t.Errorf("presented %d challenges through the store; want 2", len(bridge.presented))
	}
	var left int
	if err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM acme_http01_challenges`).Scan(&left); err != nil || left != 0 {
		t.Errorf("challenges left after cleanup: %d, %v", left, err)
	}
}
