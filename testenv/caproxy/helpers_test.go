package caproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/testenv"
)

// httpAddr is the loopback address this package's HTTP-01 responder listens
// on (port Settings.HTTP01Port); names validated there point at it in
// challtestsrv's DNS. Other packages use 127.0.0.1-5.
const httpAddr = "127.0.0.6"

func randomLabel() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newFakeClock is a Config.Clock a test moves by hand.
func newFakeClock() *clock.Fake { return clock.NewFake(time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)) }

// startProxy starts a proxy in front of the testenv Pebble; Close runs at cleanup.
func startProxy(t *testing.T, s testenv.Settings, cfg Config) *Proxy {
	t.Helper()
	cfg.Upstream, cfg.UpstreamCA = s.ACMEDirectory, s.ACMETLSCA
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// exchange is one response a client saw for a newOrder.
type exchange struct {
	status int
	header http.Header
}

// recorder is a client-side transport that records the answers to newOrder
// requests: the client's view, to hold against the proxy's Stats.
type recorder struct {
	next         http.RoundTripper
	newOrderPath string

	mu        sync.Mutex
	exchanges []exchange
	errors    int // newOrder requests that got no response
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if req.Method == http.MethodPost && req.URL.Path == r.newOrderPath {
		r.mu.Lock()
		if err != nil {
			r.errors++
		} else {
			r.exchanges = append(r.exchanges, exchange{resp.StatusCode, resp.Header.Clone()})
		}
		r.mu.Unlock()
	}
	return resp, err
}

func (r *recorder) statuses() map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[int]int{}
	for _, e := range r.exchanges {
		out[e.status]++
	}
	return out
}

func (r *recorder) last() exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.exchanges) == 0 {
		return exchange{}
	}
	return r.exchanges[len(r.exchanges)-1]
}

// proxyTransport trusts the proxy's CAFile; http2 picks HTTP/2.
func proxyTransport(t *testing.T, p *Proxy, http2 bool) *http.Transport {
	t.Helper()
	caPEM, err := os.ReadFile(p.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", p.CAFile())
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: http2, MaxIdleConnsPerHost: 8}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newClient is an acmez ACME client of the proxy whose newOrder answers rec records.
func newClient(t *testing.T, p *Proxy) (*acme.Client, *recorder) {
	t.Helper()
	rec := &recorder{next: proxyTransport(t, p, false), newOrderPath: p.newOrderPath}
	return &acme.Client{
		Directory:    p.DirectoryURL(),
		HTTPClient:   &http.Client{Timeout: 30 * time.Second, Transport: rec},
		PollInterval: 10 * time.Millisecond,
	}, rec
}

func newAccount(ctx context.Context, t *testing.T, c *acme.Client) acme.Account {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	acct, err := c.NewAccount(ctx, acme.Account{Contact: []string{"mailto:caproxy@certfleet.test"}, TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		t.Fatalf("creating an account through the proxy: %v", err)
	}
	return acct
}

// order creates an order for names (no validation, no finalize).
func order(ctx context.Context, c *acme.Client, acct acme.Account, names ...string) (acme.Order, error) {
	o := acme.Order{Profile: testenv.PebbleProfile}
	for _, n := range names {
		o.Identifiers = append(o.Identifiers, acme.Identifier{Type: "dns", Value: n})
	}
	return c.NewOrder(ctx, acct, o)
}

func mustOrder(ctx context.Context, t *testing.T, c *acme.Client, acct acme.Account, names ...string) acme.Order {
	t.Helper()
	o, err := order(ctx, c, acct, names...)
	if err != nil {
		t.Fatalf("ordering %v: %v", names, err)
	}
	return o
}

// wantRateLimited checks that err is Boulder's 429 with the given detail and
// that the response carried Retry-After retryAfter, a fresh nonce and the
// directory and help links.
func wantRateLimited(t *testing.T, err error, rec *recorder, p *Proxy, detail string, retryAfter int) {
	t.Helper()
	var prob acme.Problem
	if !errors.As(err, &prob) {
		t.Fatalf("error %v is not an ACME problem", err)
	}
	if prob.Type != ProblemRateLimited || prob.Status != http.StatusTooManyRequests {
		t.Errorf("problem type %q status %d; want %s 429", prob.Type, prob.Status, ProblemRateLimited)
	}
	if prob.Detail != detail {
		t.Errorf("detail\n  %s\nwant\n  %s", prob.Detail, detail)
	}
	ex := rec.last()
	if ex.status != http.StatusTooManyRequests {
		t.Fatalf("last newOrder answer %d; want 429", ex.status)
	}
	if got := ex.header.Get("Retry-After"); got != strconv.Itoa(retryAfter) {
		t.Errorf("Retry-After %q; want %d", got, retryAfter)
	}
	if ex.header.Get("Replay-Nonce") == "" {
		t.Error("429 without Replay-Nonce")
	}
	if ct := ex.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q", ct)
	}
	links := strings.Join(ex.header.Values("Link"), ", ")
	if !strings.Contains(links, "<"+p.DirectoryURL()+`>;rel="index"`) || !strings.Contains(links, `<`+RateLimitDocs+`>;rel="help"`) {
		t.Errorf("Link headers %q; want the directory index and the rate-limit help", links)
	}
}

// http01Responder answers Pebble's HTTP-01 requests on httpAddr and points
// the names it is asked to present at it; it is an acmez.Solver.
type http01Responder struct {
	chall testenv.ChallTestSrv
	mu    sync.Mutex
	keys  map[string]string
}

func startHTTP01(t *testing.T, s testenv.Settings) *http01Responder {
	t.Helper()
	r := &http01Responder{chall: testenv.ChallTestSrv{URL: s.ChallTestSrvURL}, keys: map[string]string{}}
	ln, err := net.Listen("tcp", net.JoinHostPort(httpAddr, strconv.Itoa(s.HTTP01Port)))
	if err != nil {
		t.Fatalf("listening for HTTP-01 on %s: %v", httpAddr, err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		token, ok := strings.CutPrefix(req.URL.Path, "/.well-known/acme-challenge/")
		r.mu.Lock()
		key, found := r.keys[token]
		r.mu.Unlock()
		if !ok || !found {
			http.NotFound(w, req)
			return
		}
		_, _ = w.Write([]byte(key))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *http01Responder) Present(ctx context.Context, ch acme.Challenge) error {
	r.mu.Lock()
	r.keys[ch.Token] = ch.KeyAuthorization
	r.mu.Unlock()
	return r.chall.AddA(ctx, ch.Identifier.Value, httpAddr)
}

func (r *http01Responder) CleanUp(_ context.Context, ch acme.Challenge) error {
	r.mu.Lock()
	delete(r.keys, ch.Token)
	r.mu.Unlock()
	return nil
}

// finish validates o's authorizations with HTTP-01 through solver and
// finalises it: the CA issues its certificate, which the proxy counts.
func finish(ctx context.Context, t *testing.T, c *acme.Client, acct acme.Account, solver *http01Responder, o acme.Order) {
	t.Helper()
	for _, authzURL := range o.Authorizations {
		authz, err := c.GetAuthorization(ctx, acct, authzURL)
		if err != nil {
			t.Fatalf("reading %s: %v", authzURL, err)
		}
		if authz.Status == acme.StatusValid {
			continue
		}
		var ch acme.Challenge
		for _, x := range authz.Challenges {
			if x.Type == acme.ChallengeTypeHTTP01 {
				ch = x
			}
		}
		if err := solver.Present(ctx, ch); err != nil {
			t.Fatal(err)
		}
		if _, err := c.InitiateChallenge(ctx, acct, ch); err != nil {
			t.Fatalf("answering the challenge for %s: %v", authz.IdentifierValue(), err)
		}
		if _, err := c.PollAuthorization(ctx, acct, authz); err != nil {
			t.Fatalf("validating %s: %v", authz.IdentifierValue(), err)
		}
	}
	var names []string
	for _, id := range o.Identifiers {
		names = append(names, id.Value)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := acmez.NewCSR(key, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FinalizeOrder(ctx, acct, o, csr.Raw); err != nil {
		t.Fatalf("finalizing the order for %v: %v", names, err)
	}
}
