package caproxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/testenv"
)

// acmez obtains a certificate through the proxy, unchanged: Pebble speaks in
// the proxy's URLs because the proxy keeps the client's Host. The CA's view
// counts exactly one order for that account, domain and identifier set.
func TestObtainThroughProxy(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	origin := strings.TrimSuffix(p.DirectoryURL(), p.dirPath)
	if !strings.HasPrefix(acct.Location, origin+"/") {
		t.Fatalf("account URL %s is not on the proxy %s", acct.Location, origin)
	}

	solver := startHTTP01(t, s)
	client := acmez.Client{Client: c, ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: solver}}
	name := "obtain-" + randomLabel() + ".caproxy.certfleet.test"
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := acmez.NewCSR(certKey, []string{name})
	if err != nil {
		t.Fatal(err)
	}
	params, err := acmez.OrderParametersFromCSR(acct, csr)
	if err != nil {
		t.Fatal(err)
	}
	params.Profile = testenv.PebbleShortProfile
	certs, err := client.ObtainCertificate(ctx, params)
	if err != nil {
		t.Fatalf("obtaining a certificate through the proxy: %v", err)
	}
	if !strings.HasPrefix(certs[0].URL, origin+"/") {
		t.Errorf("certificate URL %s is not on the proxy", certs[0].URL)
	}
	block, _ := pem.Decode(certs[0].ChainPEM)
	if block == nil {
		t.Fatal("no PEM in the chain")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(leaf.DNSNames, []string{name}) {
		t.Errorf("certificate names %v; want %s", leaf.DNSNames, name)
	}

	st := p.Stats()
	if st.Orders != 1 || st.OrdersBySANSet[name] != 1 || st.OrdersByAccount[acct.Location] != 1 || st.OrdersByDomain["certfleet.test"] != 1 {
		t.Errorf("stats %+v; want one order for %s, its account and certfleet.test", st, name)
	}
	if len(st.OrderTimes) != 1 || st.RateLimited != 0 || len(st.PenaltyViolations) != 0 {
		t.Errorf("stats %+v; want one order time, no refusals, no violations", st)
	}
	if st.Issued != 1 || st.IssuedBySANSet[name] != 1 || st.IssuedByDomain["certfleet.test"] != 1 || len(st.IssueTimes) != 1 ||
		st.IssueTimes[0].Before(st.OrderTimes[0]) || len(st.IssuedBeyondLimit) != 0 {
		t.Errorf("stats %+v; want one certificate counted once, after its order", st)
	}
	if got := rec.statuses(); got[http.StatusCreated] != 1 || got[http.StatusTooManyRequests]+got[http.StatusInternalServerError] != 0 {
		t.Errorf("client saw newOrder answers %v; want one 201 (and maybe Pebble's badNonce 400s)", got)
	}
}

// CertificatesPerFQDNSet {2, 1h} is checked at newOrder and spent at
// issuance, as Boulder does: orders for a set pass until two of its
// certificates are issued, then the next order is refused with Boulder's 429
// and spends nothing; an order admitted before still issues, uncounted
// (IssuedBeyondLimit). Other sets pass.
func TestFQDNSetLimit(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clk := newFakeClock()
	setLimit, acctLimit := Limit{Count: 2, Period: time.Hour}, Limit{Count: 4, Period: time.Hour}
	p := startProxy(t, s, Config{Limits: Limits{OrdersPerFQDNSet: setLimit, OrdersPerAccount: acctLimit}, Clock: clk})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	solver := startHTTP01(t, s)

	base := "fqdn-" + randomLabel() + ".test"
	setA := []string{"www." + base, base}
	o1 := mustOrder(ctx, t, c, acct, setA...)
	o2 := mustOrder(ctx, t, c, acct, setA[1], setA[0], "WWW."+base) // the same set, however written
	o3 := mustOrder(ctx, t, c, acct, setA...)                       // nothing issued yet: the check passes
	finish(ctx, t, c, acct, solver, o1)
	finish(ctx, t, c, acct, solver, o2)
	_, err := order(ctx, c, acct, setA...)
	wantRateLimited(t, err, rec, p, Detail(LimitCertificatesPerFQDNSet, setLimit, "", clk.Now().Add(30*time.Minute)), 1800)
	finish(ctx, t, c, acct, solver, o3) // admitted before: issued, but the empty bucket cannot count it

	st := p.Stats()
	key := FQDNSet(setA)
	if st.Orders != 3 || st.OrdersBySANSet[key] != 3 || st.Issued != 3 || st.IssuedBySANSet[key] != 3 || len(st.IssueTimes) != 3 {
		t.Errorf("stats %+v; want 3 orders and 3 certificates for %s", st, key)
	}
	if st.IssuedBeyondLimit[LimitCertificatesPerFQDNSet] != 1 || st.RateLimited != 1 || st.RateLimitedByLimit[LimitCertificatesPerFQDNSet] != 1 {
		t.Errorf("stats %+v; want one issuance beyond the limit and one CertificatesPerFQDNSet refusal", st)
	}

	// The refusal spent nothing: the account (4 an hour) still has its fourth
	// order, for another set; the fifth is the account's refusal.
	mustOrder(ctx, t, c, acct, "other."+base)
	_, err = order(ctx, c, acct, "third."+base)
	wantRateLimited(t, err, rec, p, Detail(LimitNewOrdersPerAccount, acctLimit, "", clk.Now().Add(15*time.Minute)), 900)
	st = p.Stats()
	if st.Orders != 4 || st.RateLimited != 2 || st.RateLimitedByLimit[LimitNewOrdersPerAccount] != 1 || st.OrdersByAccount[acct.Location] != 4 {
		t.Errorf("stats %+v; want 4 orders and one refusal of each limit", st)
	}
	if got := rec.statuses(); got[http.StatusCreated] != st.Orders || got[http.StatusTooManyRequests] != 2 {
		t.Errorf("client saw %v; want %d 201s and 2 429s", got, st.Orders)
	}
	// Time refills the set's bucket: one every 30 minutes (the account's
	// too, one every 15).
	clk.Advance(30 * time.Minute)
	mustOrder(ctx, t, c, acct, setA...)
}

// NewOrdersPerAccount {2, 1h}: the account's third order is refused; another
// account is not affected.
func TestAccountLimit(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := newFakeClock()
	lim := Limit{Count: 2, Period: time.Hour}
	p := startProxy(t, s, Config{Limits: Limits{OrdersPerAccount: lim}, Clock: clk})
	c, rec := newClient(t, p)
	acct1, acct2 := newAccount(ctx, t, c), newAccount(ctx, t, c)
	base := "acct-" + randomLabel() + ".test"

	mustOrder(ctx, t, c, acct1, "a."+base)
	mustOrder(ctx, t, c, acct1, "b."+base)
	clk.Advance(10 * time.Minute)
	_, err := order(ctx, c, acct1, "c."+base)
	wantRateLimited(t, err, rec, p, Detail(LimitNewOrdersPerAccount, lim, "", clk.Now().Add(20*time.Minute)), 1200)
	mustOrder(ctx, t, c, acct2, "c."+base)

	st := p.Stats()
	if st.Orders != 3 || st.OrdersByAccount[acct1.Location] != 2 || st.OrdersByAccount[acct2.Location] != 1 ||
		st.RateLimited != 1 || st.RateLimitedByLimit[LimitNewOrdersPerAccount] != 1 || st.OrdersByDomain[base] != 3 {
		t.Errorf("stats %+v; want 2+1 orders by account and one NewOrdersPerAccount refusal", st)
	}
}

// CertificatesPerDomain {2, 1h} counts issued certificates per registered
// domain, once per certificate however many of its names share it; it is
// checked at newOrder, and a refusal on one domain spends nothing on the
// order's other domains.
func TestDomainLimit(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	clk := newFakeClock()
	lim := Limit{Count: 2, Period: time.Hour}
	p := startProxy(t, s, Config{Limits: Limits{OrdersPerDomain: lim}, Clock: clk})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	solver := startHTTP01(t, s)
	d1, d2 := "dom1-"+randomLabel()+".test", "dom2-"+randomLabel()+".test"

	finish(ctx, t, c, acct, solver, mustOrder(ctx, t, c, acct, "a."+d1))
	finish(ctx, t, c, acct, solver, mustOrder(ctx, t, c, acct, "b."+d1, "c."+d1)) // d1 once
	_, err := order(ctx, c, acct, "x."+d1)
	wantRateLimited(t, err, rec, p, Detail(LimitCertificatesPerDomain, lim, d1, clk.Now().Add(30*time.Minute)), 1800)
	if !strings.Contains(err.Error(), `for "`+d1+`"`) {
		t.Errorf("refusal %v does not name %s", err, d1)
	}

	finish(ctx, t, c, acct, solver, mustOrder(ctx, t, c, acct, "a."+d2))
	_, err = order(ctx, c, acct, "b."+d2, "y."+d1) // d1 refuses: d2 is not spent
	wantRateLimited(t, err, rec, p, Detail(LimitCertificatesPerDomain, lim, d1, clk.Now().Add(30*time.Minute)), 1800)
	finish(ctx, t, c, acct, solver, mustOrder(ctx, t, c, acct, "c."+d2))
	_, err = order(ctx, c, acct, "e."+d2)
	wantRateLimited(t, err, rec, p, Detail(LimitCertificatesPerDomain, lim, d2, clk.Now().Add(30*time.Minute)), 1800)

	st := p.Stats()
	if st.Orders != 4 || st.Issued != 4 || st.IssuedByDomain[d1] != 2 || st.IssuedByDomain[d2] != 2 || len(st.IssuedBeyondLimit) != 0 ||
		st.RateLimited != 3 || st.RateLimitedByLimit[LimitCertificatesPerDomain] != 3 {
		t.Errorf("stats %+v; want 2 certificates per domain, none beyond the limit, and 3 CertificatesPerDomain refusals", st)
	}
}

// Concurrent orders of one account: the limiter reserves NewOrdersPerAccount
// before forwarding, so exactly Count reach Pebble.
func TestLimitExactUnderConcurrency(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Limits: Limits{OrdersPerAccount: Limit{Count: 3, Period: time.Hour}}})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	name := "race-" + randomLabel() + ".test"
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4) // at most 4 orders in flight at Pebble
	for range 10 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, _ = order(ctx, c, acct, name)
		})
	}
	wg.Wait()
	st := p.Stats()
	if st.Orders != 3 || st.RateLimited != 7 {
		t.Errorf("stats %+v; want exactly 3 orders and 7 refusals", st)
	}
	if got := rec.statuses(); got[http.StatusCreated] != 3 || got[http.StatusTooManyRequests] != 7 {
		t.Errorf("client saw %v; want 3 201s and 7 429s", got)
	}
}

// An order sent for a penalised key before its Retry-After ends is a
// violation (and is judged as usual); one sent at or after it is not. Both
// the limiter's and injected 429s open penalties.
func TestPenaltyViolations(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := newFakeClock()
	t0 := clk.Now()
	lim := Limit{Count: 1, Period: time.Hour}
	p := startProxy(t, s, Config{Limits: Limits{OrdersPerAccount: lim}, Clock: clk})
	c, rec := newClient(t, p)
	acct, acct2 := newAccount(ctx, t, c), newAccount(ctx, t, c)
	setA, setB := "pa-"+randomLabel()+".test", "pb-"+randomLabel()+".test"
	keyA, keyB := Key(LimitNewOrdersPerAccount, acct.Location), Key(LimitCertificatesPerFQDNSet, setB)

	mustOrder(ctx, t, c, acct, setA)
	_, err := order(ctx, c, acct, setA)
	wantRateLimited(t, err, rec, p, Detail(LimitNewOrdersPerAccount, lim, "", t0.Add(time.Hour)), 3600)
	if v := p.Stats().PenaltyViolations; len(v) != 0 {
		t.Fatalf("violations %v before any early order", v)
	}

	clk.Advance(10 * time.Minute)
	_, err = order(ctx, c, acct, setA) // 50 minutes early
	wantRateLimited(t, err, rec, p, Detail(LimitNewOrdersPerAccount, lim, "", t0.Add(time.Hour)), 3000)
	want := []Violation{{Key: keyA, At: t0.Add(10 * time.Minute), Until: t0.Add(time.Hour)}}
	if v := distinctInOrder(p.Stats().PenaltyViolations); !slices.Equal(v, want) {
		t.Fatalf("violations %v; want %v", v, want)
	}

	clk.Advance(50 * time.Minute) // exactly when the Retry-After ends
	mustOrder(ctx, t, c, acct, setA)
	if v := distinctInOrder(p.Stats().PenaltyViolations); len(v) != 1 {
		t.Fatalf("violations %v; an order at the Retry-After instant is not one", v)
	}

	// An injected 429 penalises the identifier set it names (in Boulder's
	// wording with the default CertificatesPerFQDNSet, 5 per week).
	if err := p.SetFaults(Faults{RateLimited: 1, RetryAfter: 90 * time.Second}); err != nil {
		t.Fatal(err)
	}
	injectedAt := clk.Now()
	_, err = order(ctx, c, acct2, setB)
	wantRateLimited(t, err, rec, p, Detail(LimitCertificatesPerFQDNSet, defaultOrdersPerFQDNSet, "", injectedAt.Add(90*time.Second)), 90)
	if err := p.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second)
	mustOrder(ctx, t, c, acct2, setB) // the limiter allows it: only the injected penalty was early
	clk.Advance(2 * time.Minute)
	_, _ = order(ctx, c, acct2, setB) // refused by the limiter, but not early for the injected penalty

	st := p.Stats()
	want = append(want, Violation{Key: keyB, At: injectedAt.Add(30 * time.Second), Until: injectedAt.Add(90 * time.Second)})
	if got := distinctInOrder(st.PenaltyViolations); !slices.Equal(got, want) {
		t.Errorf("violations %v; want %v", got, want)
	}
	if st.Orders != 3 || st.InjectedRateLimited != 1 || st.RateLimited != 3 {
		t.Errorf("stats %+v; want 3 orders, 1 injected and 3 real refusals", st)
	}
}

// distinctInOrder drops repeats: Pebble refuses 5% of nonces by default
// (PEBBLE_WFE_NONCEREJECT) and acmez then resends the same order at the same
// fake instant, which is a second, identical violation.
func distinctInOrder[T comparable](xs []T) []T {
	var out []T
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// Seeded faults over ~100 newOrder requests: counts near the fractions, and
// no injected refusal reached Pebble (every order Pebble accepted is a 201
// the client saw).
func TestFaultsDistribution(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Seed: 42, Faults: Faults{RateLimited: 0.3, ServerError: 0.1, RetryAfter: time.Second}})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	base := "dist-" + randomLabel() + ".test"

	const requests = 100
	total := func() int {
		n := 0
		for _, v := range rec.statuses() {
			n += v
		}
		return n
	}
	var wg sync.WaitGroup
	for w := range 4 { // at most 4 orders in flight at Pebble
		wg.Go(func() {
			for total() < requests && ctx.Err() == nil {
				_, _ = order(ctx, c, acct, strings.Repeat("x", w+1)+"-"+randomLabel()+"."+base)
			}
		})
	}
	wg.Wait()

	st := p.Stats()
	got := rec.statuses()
	n := total()
	t.Logf("client saw %v over %d newOrder requests; proxy stats: orders %d, injected 429 %d, 500 %d",
		got, n, st.Orders, st.InjectedRateLimited, st.InjectedServerErrors)
	if rec.errors != 0 {
		t.Errorf("%d newOrder requests got no answer", rec.errors)
	}
	// Pebble refuses 5% of nonces by default (PEBBLE_WFE_NONCEREJECT):
	// those are its 400 badNonce, which acmez retries.
	if got[http.StatusCreated]+got[http.StatusTooManyRequests]+got[http.StatusInternalServerError]+got[http.StatusBadRequest] != n {
		t.Errorf("answers %v include something other than 201, 429, 500 and Pebble's badNonce 400", got)
	}
	if st.Orders != got[http.StatusCreated] || st.OrdersByAccount[acct.Location] != st.Orders {
		t.Errorf("Pebble accepted %d orders; the client saw %d 201s", st.Orders, got[http.StatusCreated])
	}
	if st.InjectedRateLimited != got[http.StatusTooManyRequests] || st.InjectedServerErrors != got[http.StatusInternalServerError] {
		t.Errorf("injected %d 429s and %d 500s; the client saw %v", st.InjectedRateLimited, st.InjectedServerErrors, got)
	}
	if st.InjectedRateLimited < 15 || st.InjectedRateLimited > 45 || st.InjectedServerErrors < 3 || st.InjectedServerErrors > 20 {
		t.Errorf("injected %d 429s and %d 500s over %d requests; want about 30 and 10", st.InjectedRateLimited, st.InjectedServerErrors, n)
	}
	if st.RateLimited != 0 || st.InjectedTimeouts != 0 || st.Slowed != 0 {
		t.Errorf("stats %+v: faults that were not configured", st)
	}
	// Every answer the proxy made carries a nonce; injected 429s a Retry-After.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, ex := range rec.exchanges {
		if ex.header.Get("Replay-Nonce") == "" {
			t.Errorf("a %d answer without Replay-Nonce", ex.status)
		}
		if ex.status == http.StatusTooManyRequests && ex.header.Get("Retry-After") != "1" {
			t.Errorf("injected 429 with Retry-After %q; want 1", ex.header.Get("Retry-After"))
		}
		if ex.status == http.StatusInternalServerError && ex.header.Get("Retry-After") != "" {
			t.Errorf("injected 500 with Retry-After %q; want none", ex.header.Get("Retry-After"))
		}
	}
}

// An injected 500 is serverInternal without reaching Pebble; acmez retries
// it twice itself.
func TestServerErrorFault(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Faults: Faults{ServerError: 1, ServerErrorRetryAfter: time.Minute}})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	_, err := order(ctx, c, acct, "err-"+randomLabel()+".test")
	var prob acme.Problem
	if !errors.As(err, &prob) || prob.Type != ProblemServerInternal || prob.Status != http.StatusInternalServerError {
		t.Fatalf("error %v; want a serverInternal problem", err)
	}
	st := p.Stats()
	if st.InjectedServerErrors != 3 || st.Orders != 0 {
		t.Errorf("stats %+v; want 3 injected 500s (acmez tries three times) and no order", st)
	}
	if ex := rec.last(); ex.header.Get("Retry-After") != "60" || ex.header.Get("Replay-Nonce") == "" {
		t.Errorf("500 headers %v; want Retry-After 60 and a nonce", ex.header)
	}
}

// rawNewOrder posts body to the proxy's newOrder URL with a fresh
// transport; its client is made at once, the request sent by the returned func.
func rawNewOrder(ctx context.Context, t *testing.T, p *Proxy, http2 bool, body []byte) func() (*http.Response, error) {
	t.Helper()
	origin := strings.TrimSuffix(p.DirectoryURL(), p.dirPath)
	hc := &http.Client{Transport: proxyTransport(t, p, http2)}
	return func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, origin+p.newOrderPath, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/jose+json")
		req.Header.Set("User-Agent", "caproxy-test")
		return hc.Do(req)
	}
}

// An injected timeout holds the request, then drops it without an answer
// (HTTP/1.1 connection closed, HTTP/2 stream reset); Pebble never sees it.
func TestTimeoutFault(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Faults: Faults{Timeout: 1, TimeoutHold: 30 * time.Second}})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)

	short, cancelShort := context.WithTimeout(ctx, time.Second)
	_, err := order(short, c, acct, "timeout-"+randomLabel()+".test")
	cancelShort()
	if err == nil {
		t.Fatal("an order went through a timeout fault")
	}
	if st := p.Stats(); st.InjectedTimeouts != 1 || st.Orders != 0 {
		t.Errorf("stats %+v; want 1 injected timeout and no order", st)
	}
	if rec.errors != 1 || len(rec.exchanges) != 0 {
		t.Errorf("client saw %d errors and %d answers; want one error", rec.errors, len(rec.exchanges))
	}

	if err := p.SetFaults(Faults{Timeout: 1, TimeoutHold: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for _, h2 := range []bool{false, true} {
		start := time.Now()
		resp, err := rawNewOrder(ctx, t, p, h2, []byte(`{}`))()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("HTTP/2 %v: got %s; want the connection dropped", h2, resp.Status)
		}
		if el := time.Since(start); el < 200*time.Millisecond {
			t.Errorf("HTTP/2 %v: dropped after %v; want the 200ms hold first", h2, el)
		}
		t.Logf("HTTP/2 %v: %v", h2, err)
	}
	if st := p.Stats(); st.InjectedTimeouts != 3 || st.Orders != 0 {
		t.Errorf("stats %+v; want 3 injected timeouts and no order", st)
	}
}

// Close releases a held request at once and stops serving.
func TestCloseReleasesHeld(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Faults: Faults{Timeout: 1, TimeoutHold: time.Hour}})
	caDir := filepath.Dir(p.CAFile())
	send, again := rawNewOrder(ctx, t, p, false, []byte(`{}`)), rawNewOrder(ctx, t, p, false, []byte(`{}`))
	done := make(chan error, 1)
	go func() {
		resp, err := send()
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	for p.Stats().InjectedTimeouts == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("the held request got an answer")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request was not released by Close")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Close took %v", el)
	}
	if _, err := os.Stat(caDir); !os.IsNotExist(err) {
		t.Errorf("CA directory %s still there after Close (%v)", caDir, err)
	}
	if resp, err := again(); err == nil {
		resp.Body.Close()
		t.Error("the proxy still answers after Close")
	}
}

// A slow request is delayed, then handled as usual.
func TestSlowFault(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Faults: Faults{Slow: 1, SlowDelay: 300 * time.Millisecond}})
	c, rec := newClient(t, p)
	acct := newAccount(ctx, t, c)
	start := time.Now()
	mustOrder(ctx, t, c, acct, "slow-"+randomLabel()+".test")
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("order took %v; want at least the 300ms delay", el)
	}
	// Pebble's badNonce refusals make acmez resend: every request is slowed.
	if st := p.Stats(); st.Slowed != len(rec.exchanges) || st.Orders != 1 {
		t.Errorf("stats %+v; want %d slowed and 1 order", st, len(rec.exchanges))
	}
}

// With AllPOSTs, faults hit any POST. An injected 429 names the identifier
// set when the proxy saw the order created, else the account, and for
// newAccount the registrations limit.
func TestAllPOSTs(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{})
	c, _ := newClient(t, p)
	acct := newAccount(ctx, t, c)
	name := "all-" + randomLabel() + ".test"
	o := mustOrder(ctx, t, c, acct, name)

	if err := p.SetFaults(Faults{AllPOSTs: true, RateLimited: 1, RetryAfter: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		call func() error
		want string
	}{
		{"order poll", func() error { _, err := c.GetOrder(ctx, acct, o); return err },
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after "},
		{"authorization poll", func() error { _, err := c.GetAuthorization(ctx, acct, o.Authorizations[0]); return err },
			"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after "},
		{"account update", func() error { _, err := c.UpdateAccount(ctx, acct); return err },
			"too many new orders (300) from this account in the last 3h0m0s, retry after "},
		{"account lookup (newAccount, onlyReturnExisting)", func() error { _, err := c.GetAccount(ctx, acct); return err },
			"too many new registrations (10) from this IP address in the last 3h0m0s, retry after "},
		{"new account", func() error {
			c2, _ := newClient(t, p)
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			_, err := c2.NewAccount(ctx, acme.Account{TermsOfServiceAgreed: true, PrivateKey: key})
			return err
		}, "too many new registrations (10) from this IP address in the last 3h0m0s, retry after "},
	} {
		var prob acme.Problem
		if err := tc.call(); !errors.As(err, &prob) || prob.Type != ProblemRateLimited || !strings.HasPrefix(prob.Detail, tc.want) {
			t.Errorf("%s: %v; want a rateLimited problem starting %q", tc.what, err, tc.want)
		}
	}
	if err := p.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	mustOrder(ctx, t, c, acct, name) // within the 30 s the 429s asked for
	st := p.Stats()
	var keys []string
	for _, v := range st.PenaltyViolations {
		keys = append(keys, v.Key)
	}
	keys = distinctInOrder(keys) // a badNonce retry by acmez is a second early request
	if want := []string{Key(LimitNewOrdersPerAccount, acct.Location), Key(LimitCertificatesPerFQDNSet, name)}; !slices.Equal(keys, want) {
		t.Errorf("violations on %q; want %q (the account update's and the polls' penalties)", keys, want)
	}
	if st.InjectedRateLimited != 5 || st.Orders != 2 {
		t.Errorf("stats %+v; want 5 injected 429s and 2 orders", st)
	}
}

// Faults.UnavailablePolls answers the polls of an authorization 503 after its
// first fetch, that many times, without reaching Pebble: three make one
// acmez poll fail; a change to the authorization (a payload) is not a poll.
func TestUnavailablePolls(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{Faults: Faults{UnavailablePolls: 3}})
	c, _ := newClient(t, p)
	acct := newAccount(ctx, t, c)
	o := mustOrder(ctx, t, c, acct, "polls-"+randomLabel()+".test")
	authz, err := c.GetAuthorization(ctx, acct, o.Authorizations[0])
	if err != nil {
		t.Fatalf("the first fetch of the authorization: %v", err)
	}
	_, err = c.PollAuthorization(ctx, acct, authz)
	var prob acme.Problem
	if !errors.As(err, &prob) || prob.Status != http.StatusServiceUnavailable || prob.Type != ProblemServerInternal {
		t.Fatalf("poll: %v; want a 503 serverInternal problem", err)
	}
	if st := p.Stats(); st.InjectedUnavailablePolls != 3 {
		t.Errorf("%d polls answered 503; want 3 (acmez tries a 5xx three times)", st.InjectedUnavailablePolls)
	}
	if _, err := c.GetAuthorization(ctx, acct, o.Authorizations[0]); err != nil {
		t.Errorf("the fifth fetch: %v; want Pebble's answer", err)
	}
	o2 := mustOrder(ctx, t, c, acct, "polls2-"+randomLabel()+".test")
	if _, err := c.DeactivateAuthorization(ctx, acct, o2.Authorizations[0]); err != nil {
		t.Errorf("deactivating an authorization (not a poll): %v", err)
	}
	if st := p.Stats(); st.InjectedUnavailablePolls != 3 {
		t.Errorf("%d polls answered 503 after a deactivation; want still 3", st.InjectedUnavailablePolls)
	}
}

// A newOrder body over 64 KiB is refused with 413 (and a nonce); invalid
// faults and limits are refused by the setters.
func TestBodyLimitAndSetters(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := startProxy(t, s, Config{})
	resp, err := rawNewOrder(ctx, t, p, false, bytes.Repeat([]byte("x"), maxBody+1))()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var prob problem
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&prob); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge || prob.Status != 413 || prob.Type != ProblemMalformed || resp.Header.Get("Replay-Nonce") == "" {
		t.Errorf("answer %s %+v nonce %q; want 413 malformed with a nonce", resp.Status, prob, resp.Header.Get("Replay-Nonce"))
	}
	// A malformed newOrder is Pebble's to refuse, and is not counted.
	resp2, err := rawNewOrder(ctx, t, p, false, []byte(`{"protected":"!!"}`))()
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed JWS: %s; want Pebble's 400", resp2.Status)
	}
	if err := p.SetFaults(Faults{RateLimited: 0.8, ServerError: 0.8}); err == nil || !strings.Contains(err.Error(), "sum to") {
		t.Errorf("SetFaults with fractions over 1: %v", err)
	}
	if err := p.SetLimits(Limits{OrdersPerDomain: Limit{Count: 1}}); err == nil || !strings.Contains(err.Error(), "Limits.OrdersPerDomain.Period") {
		t.Errorf("SetLimits without a period: %v", err)
	}
	if st := p.Stats(); st.Orders != 0 || st.RateLimited != 0 {
		t.Errorf("stats %+v; want nothing counted", st)
	}
}

// Start fails clearly when the upstream cannot be used.
func TestStartErrors(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	origin := strings.TrimSuffix(s.ACMEDirectory, "/dir")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"missing CA file", Config{Upstream: s.ACMEDirectory, UpstreamCA: "/nonexistent/ca.pem"}, "reading Config.UpstreamCA"},
		{"CA file without PEM", Config{Upstream: s.ACMEDirectory, UpstreamCA: notPEM}, "holds no PEM certificate"},
		{"untrusted upstream", Config{Upstream: s.ACMEDirectory, UpstreamCA: s.PebbleRoot}, "fetching the upstream directory"},
		{"not a directory", Config{Upstream: origin + "/nope", UpstreamCA: s.ACMETLSCA}, "404"},
		{"nobody listening", Config{Upstream: "https://127.0.0.1:1/dir", UpstreamCA: s.ACMETLSCA}, "fetching the upstream directory"},
		{"bad listen address", Config{Upstream: s.ACMEDirectory, UpstreamCA: s.ACMETLSCA, Listen: "256.0.0.1:0"}, "listening on 256.0.0.1:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(ctx, tc.cfg)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}
