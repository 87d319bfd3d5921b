package acmeissuer

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// HTTP01Responder answers GET and HEAD /.well-known/acme-challenge/{token}
// from a ChallengeStore with the key authorization (text/plain), for any
// worker the CA reaches. It faces the internet, so what one request may cost
// is bounded:
//   - the Host must be the identifier the token was issued for (anything else
//     is 404, like an unknown token): a token is no use on another name;
//   - each client address may ask for ClientRate tokens a second (burst
//     ClientBurst) that turn out not to exist; a client over that budget
//     gets 429 without a database read. Found tokens cost nothing, so the
//     CA, which validates from few addresses at fleet rate and only asks
//     for tokens it issued, is never throttled; a flood of made-up tokens is;
//   - at most MaxLookups database reads run at once (the worker's own pool
//     serves claims and token spends); a request finding every slot taken
//     waits up to LookupWait for one (the CA's fetch, arriving during a
//     flood, is served once a read ends), then gets 503;
//   - a key authorization found is served from memory for CacheTTL, and
//     fetches of a token arriving while it is being read wait for that read,
//     so the CA's several vantage points, which fetch at once, cost one read.
//
// Malformed and unknown or expired tokens get 404, other methods 405, a
// database failure 503. Requests outside HTTP01Path go to Next (404 when
// nil), so it can front a worker's other handlers. The zero value of each
// bound means its default. Serve it with NewHTTP01Server, which sets the
// connection timeouts and header cap.
type HTTP01Responder struct {
	Store ChallengeReader
	Next  http.Handler

	MaxLookups  int           // concurrent database reads; default 4
	LookupWait  time.Duration // longest wait for a free read; default 2 s
	CacheTTL    time.Duration // default 2 s
	ClientRate  float64       // misses (unknown tokens) per second per client address; default 20
	ClientBurst int           // default 40
	Clock       clock.Clock   // default the wall clock

	once    sync.Once
	lookups chan struct{}
	mu      sync.Mutex
	cache   map[string]cachedChallenge
	flights map[string]*flight   // tokens being read, for fetches arriving meanwhile
	clients map[string]time.Time // client address -> GCRA theoretical arrival time
}

// ChallengeReader finds a pending HTTP-01 challenge by token: its key
// authorization and the identifier it was issued for, found false when there
// is none. It may be called concurrently and must honour ctx's deadline.
// *ChallengeStore implements it.
type ChallengeReader interface {
	Get(ctx context.Context, token string) (keyAuth, identifier string, found bool, err error)
}

var _ ChallengeReader = (*ChallengeStore)(nil)

type cachedChallenge struct {
	keyAuth, identifier string
	until               time.Time
}

// flight is one read of a token that fetches arriving during it share.
type flight struct {
	done  chan struct{} // closed once c, found and err are set
	c     cachedChallenge
	found bool
	err   error
}

// maxTracked bounds the cache and the client table: past it, entries that
// have expired (or idle clients) are dropped, and if none has, all are.
const maxTracked = 10000

func (h *HTTP01Responder) init() {
	if h.MaxLookups <= 0 {
		h.MaxLookups = 4
	}
	if h.LookupWait <= 0 {
		h.LookupWait = 2 * time.Second
	}
	if h.CacheTTL <= 0 {
		h.CacheTTL = 2 * time.Second
	}
	if h.ClientRate <= 0 {
		h.ClientRate = 20
	}
	if h.ClientBurst <= 0 {
		h.ClientBurst = 40
	}
	if h.Next == nil {
		h.Next = http.NotFoundHandler()
	}
	h.Clock = clock.Or(h.Clock)
	h.lookups = make(chan struct{}, h.MaxLookups)
	h.cache = map[string]cachedChallenge{}
	h.flights = map[string]*flight{}
	h.clients = map[string]time.Time{}
}

// ServeHTTP implements http.Handler.
func (h *HTTP01Responder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(h.init)
	token, ok := strings.CutPrefix(r.URL.Path, HTTP01Path)
	if !ok {
		h.Next.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	client := clientAddr(r)
	if h.overBudget(client) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests for unknown challenges", http.StatusTooManyRequests)
		return
	}
	if !ValidToken(token) {
		h.spendMiss(client)
		http.NotFound(w, r)
		return
	}
	c, found, err := h.lookup(r.Context(), token)
	if errors.Is(err, errBusy) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "busy: too many challenge lookups at once", http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		http.Error(w, "challenge store unavailable", http.StatusServiceUnavailable)
		return
	}
	if !found || !sameHost(r.Host, c.identifier) {
		h.spendMiss(client)
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(c.keyAuth))
}

// errBusy: every lookup slot is taken.
var errBusy = errors.New("acmeissuer: HTTP-01 lookups at their limit")

// lookup finds token's challenge: from the cache, else from the read of it
// already running (whose result it shares), else by reading it.
func (h *HTTP01Responder) lookup(ctx context.Context, token string) (cachedChallenge, bool, error) {
	for {
		now := h.Clock.Now()
		h.mu.Lock()
		c, ok := h.cache[token]
		if ok && now.Before(c.until) {
			h.mu.Unlock()
			return c, true, nil
		}
		f, reading := h.flights[token]
		if !reading {
			f = &flight{done: make(chan struct{})}
			h.flights[token] = f
		}
		h.mu.Unlock()
		if !reading {
			f.c, f.found, f.err = h.read(ctx, token, now)
			h.mu.Lock()
			delete(h.flights, token)
			h.mu.Unlock()
			close(f.done)
			return f.c, f.found, f.err
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return cachedChallenge{}, false, ctx.Err()
		}
		// A read cut short by its own request's end says nothing about
		// this one's: look again (read it, or share another read).
		if errors.Is(f.err, context.Canceled) && ctx.Err() == nil {
			continue
		}
		return f.c, f.found, f.err
	}
}

// read reads token's challenge from the store within the bound on
// concurrent reads, and caches what it found.
func (h *HTTP01Responder) read(ctx context.Context, token string, now time.Time) (cachedChallenge, bool, error) {
	wait := time.NewTimer(h.LookupWait)
	defer wait.Stop()
	select {
	case h.lookups <- struct{}{}:
		defer func() { <-h.lookups }()
	case <-wait.C:
		return cachedChallenge{}, false, errBusy
	case <-ctx.Done():
		return cachedChallenge{}, false, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	keyAuth, identifier, found, err := h.Store.Get(ctx, token)
	if err != nil || !found {
		return cachedChallenge{}, false, err
	}
	c := cachedChallenge{keyAuth: keyAuth, identifier: identifier, until: now.Add(h.CacheTTL)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.cache) >= maxTracked {
		for k, v := range h.cache {
			if !now.Before(v.until) {
				delete(h.cache, k)
			}
		}
		if len(h.cache) >= maxTracked {
			clear(h.cache)
		}
	}
	h.cache[token] = c
	return c, true, nil
}

// overBudget reports whether addr has spent its miss budget (GCRA: one
// theoretical arrival time per client, burst ClientBurst).
func (h *HTTP01Responder) overBudget(addr string) bool {
	now := h.Clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	tat, ok := h.clients[addr]
	return ok && tat.Sub(now) >= h.missBurst()
}

// spendMiss charges addr one request for a token that does not exist.
func (h *HTTP01Responder) spendMiss(addr string) {
	now := h.Clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	tat, ok := h.clients[addr]
	if !ok || tat.Before(now) {
		tat = now
	}
	if !ok && len(h.clients) >= maxTracked {
		for k, v := range h.clients {
			if v.Before(now) {
				delete(h.clients, k)
			}
		}
		if len(h.clients) >= maxTracked {
			clear(h.clients)
		}
	}
	h.clients[addr] = tat.Add(h.missInterval())
}

func (h *HTTP01Responder) missInterval() time.Duration {
	return time.Duration(float64(time.Second) / h.ClientRate)
}

func (h *HTTP01Responder) missBurst() time.Duration {
	return time.Duration(h.ClientBurst) * h.missInterval()
}

// clientAddr is the request's remote IP (not its port).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// sameHost reports whether a Host header names identifier (case and a
// trailing dot aside, port ignored).
func sameHost(hostHeader, identifier string) bool {
	host := hostHeader
	if h, _, err := net.SplitHostPort(hostHeader); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	return identifier != "" && strings.EqualFold(host, strings.TrimSuffix(identifier, "."))
}

// NewHTTP01Server is the HTTP server for an HTTP01Responder on addr: read,
// write and idle timeouts (an idle keep-alive connection is closed after
// 30 s) and an 8 KiB header cap.
func NewHTTP01Server(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
}
