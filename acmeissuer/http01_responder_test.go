package acmeissuer

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/testenv"
)

// countingReader is a ChallengeReader that knows one token, counts its
// calls and the most that ran at once, and can hold every call until
// release is closed.
type countingReader struct {
	token, keyAuth, identifier string
	release                    chan struct{} // nil: answer at once
	calls, running, peak       atomic.Int64
}

func (c *countingReader) Get(ctx context.Context, token string) (string, string, bool, error) {
	c.calls.Add(1)
	n := c.running.Add(1)
	defer c.running.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if c.release != nil {
		select {
		case <-c.release:
		case <-ctx.Done():
			return "", "", false, ctx.Err()
		}
	}
	if token != c.token {
		return "", "", false, nil
	}
	return c.keyAuth, c.identifier, true, nil
}

func get(h http.Handler, remote, host, token string) int {
	r := httptest.NewRequest(http.MethodGet, HTTP01Path+token, nil)
	r.RemoteAddr, r.Host = remote+":40000", host
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

// A flood of 10,000 token requests from one client reaches the database only
// for the client's burst; the rest are refused with 429 before any read.
func TestHTTP01ResponderFloodFromOneClient(t *testing.T) {
	reader := &countingReader{token: token43, keyAuth: "ka", identifier: "a.certfleet.test"}
	h := &HTTP01Responder{Store: reader, ClientRate: 20, ClientBurst: 40, Clock: clock.NewFake(time.Unix(1e9, 0))}
	codes := map[int]int{}
	for i := range 10000 {
		codes[get(h, "203.0.113.7", "a.certfleet.test", fmt.Sprintf("flood%d", i))]++
	}
	if codes[http.StatusNotFound] != 40 || codes[http.StatusTooManyRequests] != 9960 {
		t.Errorf("answers %v, want 40 x 404 (the burst) and 9,960 x 429", codes)
	}
	if n := reader.calls.Load(); n != 40 {
		t.Errorf("%d database reads for the flood, want 40 (the burst)", n)
	}
	// Another client is not affected, and the flooder gets its rate back
	// as time passes: 20 a second.
	if code := get(h, "192.0.2.1", "a.certfleet.test", token43); code != http.StatusOK {
		t.Errorf("another client: %d, want 200", code)
	}
	// Found tokens cost nothing: the CA, validating from one address at
	// fleet rate, is never throttled.
	for i := range 1000 {
		if code := get(h, "192.0.2.50", "a.certfleet.test", token43); code != http.StatusOK {
			t.Fatalf("the CA's fetch %d of an existing token: %d, want 200", i, code)
		}
	}
	h.Clock.(*clock.Fake).Advance(time.Second)
	allowed := 0
	for i := range 100 {
		if get(h, "203.0.113.7", "a.certfleet.test", fmt.Sprintf("later%d", i)) != http.StatusTooManyRequests {
			allowed++
		}
	}
	if allowed != 20 {
		t.Errorf("a second later the flooder got %d requests through, want 20", allowed)
	}
}

// Lookups beyond MaxLookups wait up to LookupWait for a slot, then get 503,
// so a flood from many addresses never holds more than MaxLookups database
// connections.
func TestHTTP01ResponderBoundsConcurrentLookups(t *testing.T) {
	reader := &countingReader{token: token43, keyAuth: "ka", identifier: "a.certfleet.test", release: make(chan struct{})}
	h := &HTTP01Responder{Store: reader, MaxLookups: 3, LookupWait: 20 * time.Millisecond}
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = get(h, fmt.Sprintf("198.51.100.%d", i), "a.certfleet.test", fmt.Sprintf("tok%d", i))
		}()
	}
	// 17 answers come back after LookupWait (503); 3 wait on the database.
	deadline := time.Now().Add(10 * time.Second)
	for reader.running.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(reader.release)
	wg.Wait()
	busy := 0
	for _, c := range codes {
		if c == http.StatusServiceUnavailable {
			busy++
		}
	}
	if p := reader.peak.Load(); p != 3 {
		t.Errorf("%d lookups ran at once, want MaxLookups = 3", p)
	}
	if busy != 17 {
		t.Errorf("%d requests got 503, want 17 (20 minus the 3 lookups)", busy)
	}
}

// The CA's several vantage points fetching one token cost one read.
func TestHTTP01ResponderCachesFoundChallenges(t *testing.T) {
	reader := &countingReader{token: token43, keyAuth: "ka", identifier: "a.certfleet.test"}
	fake := clock.NewFake(time.Unix(1e9, 0))
	h := &HTTP01Responder{Store: reader, CacheTTL: 2 * time.Second, Clock: fake}
	for i := range 5 {
		if code := get(h, fmt.Sprintf("192.0.2.%d", i), "a.certfleet.test", token43); code != http.StatusOK {
			t.Fatalf("fetch %d: %d", i, code)
		}
	}
	if n := reader.calls.Load(); n != 1 {
		t.Errorf("%d reads for 5 fetches within the TTL, want 1", n)
	}
	fake.Advance(3 * time.Second)
	get(h, "192.0.2.9", "a.certfleet.test", token43)
	if n := reader.calls.Load(); n != 2 {
		t.Errorf("%d reads after the TTL, want 2", n)
	}
}

// The CA's vantage points fetch a token at once, before any read of it
// ended: they share one read, and each gets the key authorization; an
// unknown token's concurrent fetches share one read too, each a miss.
func TestHTTP01ResponderConcurrentFetchesShareOneRead(t *testing.T) {
	for _, tc := range []struct {
		name, token string
		want        int
	}{{"known token", token43, http.StatusOK}, {"unknown token", "unknown", http.StatusNotFound}} {
		t.Run(tc.name, func(t *testing.T) {
			reader := &countingReader{token: token43, keyAuth: "ka", identifier: "a.certfleet.test", release: make(chan struct{})}
			h := &HTTP01Responder{Store: reader}
			var wg sync.WaitGroup
			codes := make([]int, 5)
			for i := range codes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					codes[i] = get(h, fmt.Sprintf("192.0.2.%d", i), "a.certfleet.test", tc.token)
				}()
			}
			deadline := time.Now().Add(10 * time.Second)
			for reader.running.Load() < 1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // the other fetches arrive while the read is held
			close(reader.release)
			wg.Wait()
			for i, c := range codes {
				if c != tc.want {
					t.Errorf("fetch %d: %d, want %d", i, c, tc.want)
				}
			}
			if n := reader.calls.Load(); n != 1 {
				t.Errorf("%d reads for 5 concurrent fetches, want 1", n)
			}
		})
	}
}

// The server refuses oversized headers and closes idle connections.
func TestNewHTTP01Server(t *testing.T) {
	srv := NewHTTP01Server("127.0.0.1:0", &HTTP01Responder{Store: &countingReader{}})
	if srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 || srv.ReadHeaderTimeout <= 0 {
		t.Fatalf("timeouts unset: %+v", srv)
	}
	srv.IdleTimeout = 200 * time.Millisecond // the behaviour, on a test's clock
	l, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	url := "http://" + l.Addr().String() + HTTP01Path + "x"

	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("X-Big", strings.Repeat("a", 16<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("16 KiB header: %d, want 431", resp.StatusCode)
	}

	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %sx HTTP/1.1\r\nHost: a.example\r\n\r\n", HTTP01Path)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	if _, err := conn.Read(buf); err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	// The connection is kept alive, then closed by the server when idle.
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the idle connection was not closed by the server within 5 s: %v", err)
	}
}

// Issuance through the database-backed responder while 50 addresses flood it
// with 10,000 token requests (2,000 a second for 5 s): every certificate is
// still issued and the flood never holds more than MaxLookups database reads
// at once (asserted); certificates per second over 5 s quiet and 5 s flooded
// are logged, not asserted: the flooders share the test's 2 cores, so the
// ratio says as much about the machine as about the responder.
func TestHTTP01FloodDuringIssuance(t *testing.T) {
	s := testenv.Require(t)
	d := freshDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	store := NewChallengeStore(d, 0)
	reads := &peakReader{inner: store}
	responder := &HTTP01Responder{Store: reads}
	srv := httptest.NewServer(responder)
	defer srv.Close()
	bridge := bridgeSolver{inner: HTTP01Solver{store}, handler: srv.URL, chall: testenv.ChallTestSrv{URL: s.ChallTestSrvURL}, presented: make(chan string, 64)}
	iss := newTestIssuer(t, s, d, func(c *Config) { c.Solvers = map[string]acmez.Solver{acme.ChallengeTypeHTTP01: bridge} })
	// issueFor issues certificates one after another until window ends and
	// returns how many it issued.
	issueFor := func(window time.Duration) int {
		n := 0
		for end := time.Now().Add(window); time.Now().Before(end); n++ {
			name := fmt.Sprintf("flood%d-%s.certfleet.test", n, randomSuffix())
			if _, err := iss.Obtain(ctx, Request{Tenant: "t", SANs: []string{name}}); err != nil {
				t.Fatalf("issuing %s: %v", name, err)
			}
			<-bridge.presented
		}
		return n
	}
	const window = 5 * time.Second
	quiet := issueFor(window)

	var sent, refused atomic.Int64
	var wg sync.WaitGroup
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	for c := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(c+1))}}
			client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
			tick := time.NewTicker(window / 200)
			defer tick.Stop()
			for i := 0; i < 200; i++ {
				<-tick.C
				req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+port+HTTP01Path+fmt.Sprintf("f%d-%d", c, i), nil)
				req.Host = "victim.certfleet.test"
				resp, err := client.Do(req)
				sent.Add(1)
				if err == nil {
					if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
						refused.Add(1)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	flooded := issueFor(window)
	wg.Wait()
	t.Logf("certificates in %v: %d quiet, %d under a flood of %d requests (%d refused with 429/503): ratio %.2f",
		window, quiet, flooded, sent.Load(), refused.Load(), float64(flooded)/float64(quiet))
	if p := reads.peak.Load(); p > int64(responder.MaxLookups) {
		t.Errorf("%d database reads ran at once, more than MaxLookups = %d", p, responder.MaxLookups)
	}
	if sent.Load() != 10000 {
		t.Errorf("the flood sent %d requests, want 10,000", sent.Load())
	}
}

// peakReader records the most concurrent reads through it.
type peakReader struct {
	inner         ChallengeReader
	running, peak atomic.Int64
}

func (p *peakReader) Get(ctx context.Context, token string) (string, string, bool, error) {
	n := p.running.Add(1)
	defer p.running.Add(-1)
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			break
		}
	}
	return p.inner.Get(ctx, token)
}
