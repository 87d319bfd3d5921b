package caproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

const (
	// maxBody caps the request bodies the proxy buffers (newOrder, and every
	// POST with Faults.AllPOSTs); larger ones are answered 413.
	maxBody = 64 << 10
	// maxOrderBody caps how much of a 201 newOrder answer is read to learn
	// the order's URLs.
	maxOrderBody = 1 << 20
	// maxOrderPaths bounds the remembered order URLs (they name the
	// identifier set of injected 429s on later POSTs, and tell which
	// answers issue a certificate).
	maxOrderPaths = 1 << 16
	userAgent     = "certfleet-caproxy"
)

// Proxy is a running CA proxy. Its methods are safe for concurrent use.
type Proxy struct {
	upstream     *url.URL // Pebble: scheme and host
	dirPath      string
	newOrderPath string
	newNoncePath string
	dirURL       string
	caFile       string
	tmpDir       string
	clock        clock.Clock

	transport *http.Transport
	nonces    *http.Client
	rp        *httputil.ReverseProxy
	tlsConfig *tls.Config
	addr      string // the address it listens on (kept across Stop and Start)

	srvMu sync.Mutex
	srv   *http.Server // nil while stopped (Stop)

	base      context.Context // cancelled by Close: ends held and forwarded requests
	cancel    context.CancelFunc
	handlers  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu         sync.Mutex
	closed     bool
	limits     Limits
	faults     Faults
	dice       *rand.Rand
	buckets    map[string]time.Time    // Key(limit, value) → TAT
	penalties  map[string]time.Time    // Key(limit, value) → end of the Retry-After the proxy sent
	orderPaths map[string]*orderRecord // order, finalize and authorization paths → the order
	authzGets  map[string]int          // authorization path → POST-as-GETs seen (Faults.UnavailablePolls)
	stats      Stats
}

// orderRecord is an order Pebble created through the proxy: its keys, the
// URLs whose answers say it was issued, and whether it was counted so.
type orderRecord struct {
	keys                    orderKeys
	orderPath, finalizePath string
	issued                  bool
}

// Stats is the CA's view of what clients did, as counted by the proxy.
type Stats struct {
	Orders          int            // newOrder requests Pebble accepted (201)
	OrdersBySANSet  map[string]int // key: FQDNSet of the order's identifiers
	OrdersByAccount map[string]int // key: account URL (kid)
	OrdersByDomain  map[string]int // key: registered domain (RegisteredDomain)

	// Issued counts certificates issued (see the package doc: a finalize
	// Pebble accepted, or an order first seen valid), once per order, by
	// the order's registered domains and identifier set; IssueTimes are
	// their instants (Config.Clock), sorted.
	Issued         int
	IssuedByDomain map[string]int
	IssuedBySANSet map[string]int
	IssueTimes     []time.Time
	// IssuedBeyondLimit counts, per limit (LimitCertificatesPerDomain,
	// LimitCertificatesPerFQDNSet), issuances that found their bucket
	// already empty: Boulder checks these limits at newOrder but spends them
	// only at issuance, best effort, so orders admitted together can issue
	// more certificates than the limit and the excess is not counted. A
	// client whose own accounting matches the CA's never causes one.
	IssuedBeyondLimit map[string]int

	RateLimited        int            // 429s from the proxy's Limits (not injected)
	RateLimitedByLimit map[string]int // LimitNewOrdersPerAccount, LimitCertificatesPerDomain, LimitCertificatesPerFQDNSet

	InjectedRateLimited, InjectedServerErrors, InjectedTimeouts, Slowed int
	// InjectedUnavailablePolls counts the authorization polls answered 503
	// (Faults.UnavailablePolls).
	InjectedUnavailablePolls int

	// PenaltyViolations are newOrder requests that arrived for a key while
	// a Retry-After the proxy sent for that key (real or injected 429) was
	// still in force, whatever then happened to them.
	PenaltyViolations []Violation
	// OrderTimes are the instants (Config.Clock) at which the limiter admitted
	// each order Pebble then accepted, sorted.
	OrderTimes []time.Time
}

// Violation is one newOrder sent before the Retry-After the proxy gave for
// Key (see the package Key function) ended.
type Violation struct {
	Key       string
	At, Until time.Time
}

// Start validates cfg, learns the newOrder and newNonce paths from the
// upstream directory and serves HTTPS until Close. ctx bounds the start-up
// only.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	upstream, _ := url.Parse(cfg.Upstream) // Validate parsed it
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // Pebble is local: never through a proxy from the environment
	tr.MaxIdleConnsPerHost = 64
	if cfg.UpstreamCA != "" {
		pemBytes, err := os.ReadFile(cfg.UpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("caproxy: reading Config.UpstreamCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("caproxy: Config.UpstreamCA %s holds no PEM certificate", cfg.UpstreamCA)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	p := &Proxy{
		upstream:   &url.URL{Scheme: upstream.Scheme, Host: upstream.Host},
		dirPath:    upstream.EscapedPath(),
		clock:      clock.Or(cfg.Clock),
		transport:  tr,
		nonces:     &http.Client{Transport: tr, Timeout: 10 * time.Second},
		limits:     cfg.Limits,
		faults:     cfg.Faults,
		dice:       newDice(cfg.Seed),
		buckets:    map[string]time.Time{},
		penalties:  map[string]time.Time{},
		orderPaths: map[string]*orderRecord{},
		authzGets:  map[string]int{},
		stats:      newStats(),
	}
	if err := p.readDirectory(ctx, cfg.Upstream); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}

	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cert, caPEM, err := servingCert(time.Now())
	if err != nil {
		return nil, fmt.Errorf("caproxy: making the serving certificate: %w", err)
	}
	p.tmpDir, err = os.MkdirTemp("", "caproxy-")
	if err != nil {
		return nil, fmt.Errorf("caproxy: making a directory for the CA file: %w", err)
	}
	p.caFile = filepath.Join(p.tmpDir, "ca.pem")
	if err := os.WriteFile(p.caFile, caPEM, 0o644); err != nil {
		os.RemoveAll(p.tmpDir)
		return nil, fmt.Errorf("caproxy: writing the CA file: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		os.RemoveAll(p.tmpDir)
		return nil, fmt.Errorf("caproxy: listening on %s: %w", listen, err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	p.dirURL = "https://" + net.JoinHostPort(host, strconv.Itoa(addr.Port)) + p.dirPath

	quiet := log.New(io.Discard, "", 0)
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Keep the client's Host: Pebble builds its URLs from it
			// and checks the JWS "url" against it. Rewrite has already
			// dropped any X-Forwarded-* the client sent.
			pr.Out.URL.Scheme = p.upstream.Scheme
			pr.Out.URL.Host = p.upstream.Host
			pr.Out.Host = pr.In.Host
		},
		Transport:      tr,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.forwardError,
		ErrorLog:       quiet,
	}
	p.base, p.cancel = context.WithCancel(context.Background())
	p.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	p.addr = ln.Addr().String()
	p.serve(ln)
	return p, nil
}

// serve serves on ln until the server is stopped or closed.
func (p *Proxy) serve(ln net.Listener) {
	srv := &http.Server{
		Handler:           p,
		TLSConfig:         p.tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // TLS handshakes of clients that do not trust CAFile, dropped connections
	}
	p.srvMu.Lock()
	p.srv = srv
	p.srvMu.Unlock()
	go func() { _ = srv.ServeTLS(ln, "", "") }()
}

// newDice is the fault dice for a seed: a PCG whose two words derive from it.
func newDice(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func newStats() Stats {
	return Stats{
		OrdersBySANSet:     map[string]int{},
		OrdersByAccount:    map[string]int{},
		OrdersByDomain:     map[string]int{},
		IssuedByDomain:     map[string]int{},
		IssuedBySANSet:     map[string]int{},
		IssuedBeyondLimit:  map[string]int{},
		RateLimitedByLimit: map[string]int{},
	}
}

// readDirectory fetches the upstream directory for its newOrder and newNonce paths.
func (p *Proxy) readDirectory(ctx context.Context, dirURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dirURL, nil)
	if err != nil {
		return fmt.Errorf("caproxy: fetching the upstream directory: %w", err)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.nonces.Do(req)
	if err != nil {
		return fmt.Errorf("caproxy: fetching the upstream directory: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("caproxy: fetching the upstream directory %s: %s", dirURL, resp.Status)
	}
	var dir map[string]any
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&dir); err != nil {
		return fmt.Errorf("caproxy: decoding the upstream directory %s: %w", dirURL, err)
	}
	for _, f := range []struct {
		name string
		path *string
	}{{"newOrder", &p.newOrderPath}, {"newNonce", &p.newNoncePath}} {
		s, _ := dir[f.name].(string)
		u, err := url.Parse(s)
		if s == "" || err != nil || u.Path == "" {
			return fmt.Errorf("caproxy: the upstream directory %s has no usable %q URL (%q)", dirURL, f.name, s)
		}
		*f.path = u.Path
	}
	return nil
}

// DirectoryURL is the proxy's ACME directory: https://127.0.0.1:<port> and
// the upstream directory's path.
func (p *Proxy) DirectoryURL() string { return p.dirURL }

// CAFile is a PEM file with the throwaway CA that signs the proxy's serving
// certificate (127.0.0.1, ::1, localhost); clients add it to their trusted
// roots. Close removes it.
func (p *Proxy) CAFile() string { return p.caFile }

// SetFaults replaces the faults for requests that arrive from now on; the
// dice keep their sequence.
func (p *Proxy) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = f
	return nil
}

// SetLimits replaces the limits for requests that arrive from now on.
// Buckets keep their state: a changed limit judges the spending so far, and
// a limit set to zero then back starts from where it was.
func (p *Proxy) SetLimits(l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.limits = l
	return nil
}

// Stats returns a deep copy of the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	copyMap := func(m map[string]int) map[string]int {
		out := make(map[string]int, len(m))
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	s.OrdersBySANSet = copyMap(s.OrdersBySANSet)
	s.OrdersByAccount = copyMap(s.OrdersByAccount)
	s.OrdersByDomain = copyMap(s.OrdersByDomain)
	s.IssuedByDomain = copyMap(s.IssuedByDomain)
	s.IssuedBySANSet = copyMap(s.IssuedBySANSet)
	s.IssuedBeyondLimit = copyMap(s.IssuedBeyondLimit)
	s.RateLimitedByLimit = copyMap(s.RateLimitedByLimit)
	s.PenaltyViolations = append([]Violation(nil), s.PenaltyViolations...)
	s.OrderTimes = append([]time.Time(nil), s.OrderTimes...)
	s.IssueTimes = append([]time.Time(nil), s.IssueTimes...)
	return s
}

// Close stops the server, releases held and forwarded requests, waits for
// its handlers and removes CAFile's directory.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cancel()
		var err error
		p.srvMu.Lock()
		if p.srv != nil {
			err = p.srv.Close()
		}
		p.srvMu.Unlock()
		p.handlers.Wait()
		p.transport.CloseIdleConnections()
		if rmErr := os.RemoveAll(p.tmpDir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("caproxy: removing the CA file: %w", rmErr))
		}
		p.closeErr = err
	})
	return p.closeErr
}

// fault is the outcome of one roll of the dice.
type fault int

const (
	noFault fault = iota
	faultRateLimited
	faultServerError
	faultTimeout
	faultSlow
)

// orderState follows one newOrder from the limiter to Pebble's answer.
type orderState struct {
	keys    orderKeys
	keyed   bool        // keys were derived; unkeyed orders are only counted
	spent   []bucketTxn // buckets spent for the order (NewOrdersPerAccount)
	at      time.Time   // when the limiter admitted it
	settled bool        // committed or refunded (under Proxy.mu)
}

type bucketTxn struct {
	limitName, value string
	limit            Limit
	// checkOnly: judged at newOrder but not spent there (Boulder's
	// check-only transactions for the certificate limits).
	checkOnly bool
}

func (t bucketTxn) key() string { return Key(t.limitName, t.value) }

type orderStateKey struct{}

// ServeHTTP forwards everything to Pebble, deciding newOrder requests (and,
// with Faults.AllPOSTs, every POST) first: fault dice, then limits.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		http.Error(w, "caproxy: closed", http.StatusServiceUnavailable)
		return
	}
	p.handlers.Add(1)
	allPOSTs := p.faults.AllPOSTs
	p.mu.Unlock()
	defer p.handlers.Done()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(p.base, cancel)()
	r = r.WithContext(ctx)

	newOrder := r.Method == http.MethodPost && r.URL.Path == p.newOrderPath
	polls := r.Method == http.MethodPost && !newOrder && p.isAuthorization(r.URL.Path)
	if !newOrder && !polls && (r.Method != http.MethodPost || !allPOSTs) {
		p.rp.ServeHTTP(w, r)
		return
	}

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return // the client went away mid-body: nobody to answer
	}
	if len(body) > maxBody {
		p.writeProblem(w, r, http.StatusRequestEntityTooLarge, ProblemMalformed,
			fmt.Sprintf("caproxy: request body over %d bytes", maxBody), 0)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil

	jws, _ := parseJWS(body) // malformed: Pebble answers it
	if polls && jws.postAsGet && p.unavailablePoll(r.URL.Path) {
		p.writeProblem(w, r, http.StatusServiceUnavailable, ProblemServerInternal,
			"caproxy: injected unavailability of an authorization poll", 0)
		return
	}
	if !newOrder && !allPOSTs {
		p.rp.ServeHTTP(w, r)
		return
	}
	var keys orderKeys
	var keyed bool
	if newOrder {
		if keys, keyed = keysOf(jws); keyed {
			p.recordViolations(keys)
		}
	}

	switch f, faults := p.roll(newOrder); f {
	case faultRateLimited:
		p.injectRateLimited(w, r, faults, jws, keys, keyed)
		return
	case faultServerError:
		p.writeProblem(w, r, http.StatusInternalServerError, ProblemServerInternal,
			"caproxy: injected server error", retryAfterHeader(faults.ServerErrorRetryAfter))
		return
	case faultTimeout:
		dropAfter(ctx, w, faults.TimeoutHold)
		return
	case faultSlow:
		if clock.Sleep(ctx, faults.SlowDelay) != nil {
			return // client gone or proxy closing
		}
	}

	if newOrder {
		st := &orderState{keys: keys, keyed: keyed}
		if keyed {
			if d := p.reserve(st); d != nil {
				p.writeProblem(w, r, http.StatusTooManyRequests, ProblemRateLimited, d.detail, d.retryAfter)
				return
			}
		}
		r = r.WithContext(context.WithValue(ctx, orderStateKey{}, st))
	}
	p.rp.ServeHTTP(w, r)
}

func retryAfterHeader(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return retryAfterSeconds(d)
}

// roll throws the dice once for an eligible request (a newOrder, or any POST
// with AllPOSTs) and counts the fault it picks.
func (p *Proxy) roll(newOrder bool) (fault, Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.faults
	if !newOrder && !f.AllPOSTs {
		return noFault, f // AllPOSTs was switched off since the request arrived
	}
	x := p.dice.Float64()
	switch {
	case x < f.RateLimited:
		p.stats.InjectedRateLimited++
		return faultRateLimited, f
	case x < f.RateLimited+f.ServerError:
		p.stats.InjectedServerErrors++
		return faultServerError, f
	case x < f.RateLimited+f.ServerError+f.Timeout:
		p.stats.InjectedTimeouts++
		return faultTimeout, f
	case x < f.RateLimited+f.ServerError+f.Timeout+f.Slow:
		p.stats.Slowed++
		return faultSlow, f
	}
	return noFault, f
}

// recordViolations notes every key of the order under a penalty still in force.
func (p *Proxy) recordViolations(k orderKeys) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	for _, key := range k.penaltyKeys() {
		until, ok := p.penalties[key]
		switch {
		case !ok:
		case now.Before(until):
			p.stats.PenaltyViolations = append(p.stats.PenaltyViolations, Violation{Key: key, At: now, Until: until})
		default:
			delete(p.penalties, key)
		}
	}
}

// penalize opens (or extends) a penalty on key until until. Caller holds p.mu.
func (p *Proxy) penalize(key string, until time.Time) {
	if until.After(p.penalties[key]) {
		p.penalties[key] = until
	}
}

// refusal is a 429 to send.
type refusal struct {
	detail     string
	retryAfter int64 // seconds
}

// txns lists the buckets an order spends under the current limits. Caller holds p.mu.
func (p *Proxy) txns(k orderKeys) []bucketTxn {
	var out []bucketTxn
	if l := p.limits.OrdersPerAccount; l.Count > 0 {
		out = append(out, bucketTxn{LimitNewOrdersPerAccount, k.account, l, false})
	}
	return append(out, p.certificateTxns(k, true)...)
}

// certificateTxns are the buckets of the certificate limits
// (CertificatesPerDomain once per registered domain, CertificatesPerFQDNSet),
// checked at newOrder (checkOnly) and spent at issuance. Caller holds p.mu.
func (p *Proxy) certificateTxns(k orderKeys, checkOnly bool) []bucketTxn {
	var out []bucketTxn
	if l := p.limits.OrdersPerDomain; l.Count > 0 {
		for _, d := range k.domains {
			out = append(out, bucketTxn{LimitCertificatesPerDomain, d, l, checkOnly})
		}
	}
	if l := p.limits.OrdersPerFQDNSet; l.Count > 0 {
		out = append(out, bucketTxn{LimitCertificatesPerFQDNSet, k.set, l, checkOnly})
	}
	return out
}

// reserve judges every bucket of the order and, if all of them allow it,
// spends NewOrdersPerAccount (the certificate limits are only checked here,
// as Boulder's WFE checkNewOrderLimits does with NewOrderLimitTransactions);
// otherwise it spends nothing and returns the refusal of the bucket with the
// longest wait (Boulder's "stricter" decision), penalising its key.
func (p *Proxy) reserve(st *orderState) *refusal {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	txns := p.txns(st.keys)
	newTATs := make([]time.Time, len(txns))
	var denied *bucketTxn
	var wait time.Duration
	for i := range txns {
		ok, tat, retryIn := gcraDecide(txns[i].limit, p.buckets[txns[i].key()], now)
		if !ok {
			if denied == nil || retryIn > wait {
				denied, wait = &txns[i], retryIn
			}
			continue
		}
		newTATs[i] = tat
	}
	if denied != nil {
		secs := retryAfterSeconds(wait)
		until := now.Add(time.Duration(secs) * time.Second)
		p.penalize(denied.key(), until)
		p.stats.RateLimited++
		p.stats.RateLimitedByLimit[denied.limitName]++
		domain := ""
		if denied.limitName == LimitCertificatesPerDomain {
			domain = denied.value
		}
		return &refusal{detail: Detail(denied.limitName, denied.limit, domain, ceilSecond(until)), retryAfter: secs}
	}
	var spent []bucketTxn
	for i, t := range txns {
		if !t.checkOnly {
			p.buckets[t.key()] = newTATs[i]
			spent = append(spent, t)
		}
	}
	p.pruneBuckets(now)
	st.spent, st.at = spent, now
	return nil
}

// pruneBuckets forgets full buckets once there are many. Caller holds p.mu.
func (p *Proxy) pruneBuckets(now time.Time) {
	if len(p.buckets) > 1<<16 {
		for k, tat := range p.buckets {
			if !tat.After(now) {
				delete(p.buckets, k)
			}
		}
	}
}

// issue counts an order's certificate, once, and spends its certificate
// limits as Boulder's RA countCertificateIssued does once the CA has signed:
// spend-only transactions, best effort, each spent only if it fits (Boulder's
// BatchSpend writes a spend-only bucket only when its decision allows it),
// else counted in IssuedBeyondLimit. Caller holds p.mu.
func (p *Proxy) issue(rec *orderRecord) {
	if rec.issued {
		return
	}
	rec.issued = true
	now := p.clock.Now()
	p.stats.Issued++
	insertTime(&p.stats.IssueTimes, now)
	p.stats.IssuedBySANSet[rec.keys.set]++
	for _, d := range rec.keys.domains {
		p.stats.IssuedByDomain[d]++
	}
	for _, t := range p.certificateTxns(rec.keys, false) {
		ok, tat, _ := gcraDecide(t.limit, p.buckets[t.key()], now)
		if !ok {
			p.stats.IssuedBeyondLimit[t.limitName]++
			continue
		}
		p.buckets[t.key()] = tat
	}
	p.pruneBuckets(now)
}

// insertTime inserts t into the sorted times.
func insertTime(times *[]time.Time, t time.Time) {
	i := sort.Search(len(*times), func(i int) bool { return (*times)[i].After(t) })
	*times = append(*times, time.Time{})
	copy((*times)[i+1:], (*times)[i:])
	(*times)[i] = t
}

// refund gives back what reserve spent, once.
func (p *Proxy) refund(st *orderState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st.settled {
		return
	}
	st.settled = true
	now := p.clock.Now()
	for _, t := range st.spent {
		tat, ok := p.buckets[t.key()]
		if !ok {
			continue
		}
		if tat = gcraRefund(t.limit, tat, now); tat.After(now) {
			p.buckets[t.key()] = tat
		} else {
			delete(p.buckets, t.key())
		}
	}
}

// commit counts an order Pebble accepted and remembers its URLs.
func (p *Proxy) commit(st *orderState, location string, body []byte) {
	var order struct {
		Finalize       string   `json:"finalize"`
		Authorizations []string `json:"authorizations"`
	}
	_ = json.Unmarshal(body, &order) // best effort: only names later injected 429s

	p.mu.Lock()
	defer p.mu.Unlock()
	if st.settled {
		return
	}
	st.settled = true
	at := st.at
	if !st.keyed {
		at = p.clock.Now()
	}
	p.stats.Orders++
	insertTime(&p.stats.OrderTimes, at)
	if !st.keyed {
		return
	}
	k := st.keys
	p.stats.OrdersBySANSet[k.set]++
	p.stats.OrdersByAccount[k.account]++
	for _, d := range k.domains {
		p.stats.OrdersByDomain[d]++
	}
	if len(p.orderPaths) > maxOrderPaths {
		clear(p.orderPaths)
		clear(p.authzGets)
	}
	rec := &orderRecord{keys: k, orderPath: urlPath(location), finalizePath: urlPath(order.Finalize)}
	for _, s := range append([]string{location, order.Finalize}, order.Authorizations...) {
		if path := urlPath(s); path != "" {
			p.orderPaths[path] = rec
		}
	}
	for _, a := range order.Authorizations {
		if path := urlPath(a); path != "" {
			p.authzGets[path] = 0
		}
	}
}

// urlPath is the path of a URL the CA sent, or "".
func urlPath(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Path
}

// isAuthorization reports whether path is an authorization of an order the
// proxy saw created.
func (p *Proxy) isAuthorization(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.authzGets[path]
	return ok && p.faults.UnavailablePolls > 0
}

// unavailablePoll counts a POST-as-GET of an authorization and reports
// whether to answer it 503: every one after its first (the fetch before a
// challenge is answered; the later ones are polls) until UnavailablePolls
// have been refused for that authorization.
func (p *Proxy) unavailablePoll(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, ok := p.authzGets[path]
	if !ok {
		return false
	}
	p.authzGets[path] = n + 1
	if n >= 1 && n <= p.faults.UnavailablePolls {
		p.stats.InjectedUnavailablePolls++
		return true
	}
	return false
}

// modifyResponse settles a newOrder's reservation on Pebble's answer (a 201
// counts the order, anything else refunds it) and counts issuance from the
// answers to an order's finalize and order URLs.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	st, _ := resp.Request.Context().Value(orderStateKey{}).(*orderState)
	if st == nil {
		if resp.Request.Method == http.MethodPost && resp.StatusCode == http.StatusOK {
			p.watchIssuance(resp)
		}
		return nil
	}
	if resp.StatusCode != http.StatusCreated {
		p.refund(st)
		return nil
	}
	// Pebble has created the order whatever happens to the rest of the
	// body, so a read error still counts it.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxOrderBody))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), resp.Body), resp.Body}
	p.commit(st, resp.Header.Get("Location"), body)
	return nil
}

// watchIssuance counts the certificate of an order whose finalize Pebble
// accepted (200, the order "processing" or "valid": Pebble signs the
// certificate in the background right after answering, as Boulder's
// asynchronous finalize does) or whose order or finalize answer first shows
// it "valid" (a client that lost the finalize answer and polled). That is
// the closest the proxy sees to the instant the CA issues.
func (p *Proxy) watchIssuance(resp *http.Response) {
	path := resp.Request.URL.Path
	p.mu.Lock()
	rec := p.orderPaths[path]
	watch := rec != nil && !rec.issued && (path == rec.orderPath || path == rec.finalizePath)
	p.mu.Unlock()
	if !watch {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxOrderBody))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), resp.Body), resp.Body}
	var order struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(body, &order) != nil {
		return
	}
	if order.Status == "valid" || (path == rec.finalizePath && order.Status == "processing") {
		p.mu.Lock()
		p.issue(rec)
		p.mu.Unlock()
	}
}

// forwardError answers when Pebble could not be reached (or the client left):
// the reservation is refunded, since no order was created that the proxy saw.
func (p *Proxy) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	if st, _ := r.Context().Value(orderStateKey{}).(*orderState); st != nil {
		p.refund(st)
	}
	if r.Context().Err() != nil {
		w.WriteHeader(http.StatusBadGateway) // nobody is listening any more
		return
	}
	p.writeProblem(w, r, http.StatusBadGateway, ProblemServerInternal,
		fmt.Sprintf("caproxy: forwarding to the CA: %v", err), 0)
}

// injectRateLimited answers an injected 429 in Boulder's exact-set wording
// when the identifier set is known (always for a newOrder), else in its
// per-account (or, for newAccount, per-IP registrations) wording, and
// penalises that key.
func (p *Proxy) injectRateLimited(w http.ResponseWriter, r *http.Request, f Faults, j jwsInfo, k orderKeys, keyed bool) {
	secs := retryAfterSeconds(f.RetryAfter)
	p.mu.Lock()
	now := p.clock.Now()
	until := now.Add(time.Duration(secs) * time.Second)
	var name, value string
	var lim Limit
	set := ""
	if rec := p.orderPaths[r.URL.Path]; rec != nil {
		set = rec.keys.set
	}
	switch {
	case keyed || len(j.identifiers) > 0 || set != "":
		name, lim = LimitCertificatesPerFQDNSet, orDefault(p.limits.OrdersPerFQDNSet, defaultOrdersPerFQDNSet)
		switch {
		case keyed:
			value = k.set
		case len(j.identifiers) > 0:
			value = FQDNSet(j.identifiers)
		default:
			value = set
		}
	case j.kid != "":
		name, value, lim = LimitNewOrdersPerAccount, j.kid, orDefault(p.limits.OrdersPerAccount, defaultOrdersPerAccount)
	default:
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		name, value, lim = LimitNewRegistrationsPerIPAddress, host, defaultRegistrations
	}
	p.penalize(Key(name, value), until)
	p.mu.Unlock()
	p.writeProblem(w, r, http.StatusTooManyRequests, ProblemRateLimited, Detail(name, lim, "", ceilSecond(until)), secs)
}

func orDefault(l, def Limit) Limit {
	if l.Count > 0 {
		return l
	}
	return def
}

// ceilSecond rounds t up to a whole second, so the instant a detail names
// (formatted to the second) is never before the Retry-After it goes with.
func ceilSecond(t time.Time) time.Time {
	if tr := t.Truncate(time.Second); !tr.Equal(t) {
		return tr.Add(time.Second)
	}
	return t
}

// writeProblem answers with a problem document made by the proxy, with what
// Pebble puts on every answer: a fresh Replay-Nonce (fetched from Pebble, so
// the client's nonce pool survives) and the directory's Link. retryAfter
// (seconds), when positive, is sent as Retry-After.
func (p *Proxy) writeProblem(w http.ResponseWriter, r *http.Request, status int, typ, detail string, retryAfter int64) {
	h := w.Header()
	if nonce, err := p.freshNonce(r.Context(), r.Host); err == nil {
		h.Set("Replay-Nonce", nonce)
	}
	host := r.Host
	if host == "" {
		host = p.selfHost()
	}
	h.Add("Link", fmt.Sprintf("<https://%s%s>;rel=\"index\"", host, p.dirPath))
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(retryAfter, 10))
		if typ == ProblemRateLimited {
			h.Add("Link", fmt.Sprintf("<%s>;rel=\"help\"", RateLimitDocs))
		}
	}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "public, max-age=0, no-cache")
	doc, err := json.MarshalIndent(problem{Type: typ, Detail: detail, Status: status}, "", "  ")
	if err != nil {
		doc = []byte(`{"type":"` + ProblemServerInternal + `"}`)
	}
	w.WriteHeader(status)
	_, _ = w.Write(doc)
}

// selfHost is the proxy's own host:port, for requests without Host.
func (p *Proxy) selfHost() string {
	u, err := url.Parse(p.dirURL)
	if err != nil {
		return "localhost"
	}
	return u.Host
}

// freshNonce asks Pebble for a nonce (HEAD newNonce) as the client would,
// with the client's Host.
func (p *Proxy) freshNonce(ctx context.Context, host string) (string, error) {
	u := *p.upstream
	u.Path = p.newNoncePath
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("caproxy: asking the CA for a nonce: %w", err)
	}
	if host != "" {
		req.Host = host
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.nonces.Do(req)
	if err != nil {
		return "", fmt.Errorf("caproxy: asking the CA for a nonce: %w", err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	if nonce == "" {
		return "", fmt.Errorf("caproxy: asking the CA for a nonce: %s without Replay-Nonce", resp.Status)
	}
	return nonce, nil
}

// dropAfter holds the request for hold (or until the client goes or the
// proxy closes), then drops it without an answer: the connection is
// hijacked and closed on HTTP/1.1, the stream reset on HTTP/2.
func dropAfter(ctx context.Context, w http.ResponseWriter, hold time.Duration) {
	_ = clock.Sleep(ctx, hold)
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		conn.Close()
		return
	}
	panic(http.ErrAbortHandler) // HTTP/2: net/http resets the stream, quietly
}
