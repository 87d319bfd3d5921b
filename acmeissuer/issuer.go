// Package acmeissuer obtains certificates from one ACME CA through acmez: the
// fleet-wide ACME account per (CA directory, tenant), the order itself with an
// explicit profile and ARI "replaces", HTTP-01 through a database-backed
// challenge store and responder, DNS-01 through libdns providers, the
// Retry-After of a 429 that acmez drops, and the classification of every error
// into retry, rate-limited or permanent.
//
// It owns the acme_accounts rows of its CA directory (schema 0001), the
// acme_http01_challenges table (schema 0003) and the acme_dns01_records table
// (schema 0010: DNS-01 records written through providers, so a crashed
// worker's are removed by the next), and touches no other table. It
// does not spend rate-limit tokens, record penalties, store certificates,
// seal certificate keys or talk to Kafka: those belong to the pipeline, which
// calls Obtain and seals Result.PrivateKey (seal.SealPrivateKey). It only
// reports what the CA said: a 429 or a final 5xx comes back as a *CAError
// (status, problem, detail, Retry-After), and the pipeline asks package
// ratelimit which buckets that names and penalises them. It does not import
// ratelimit. Identifiers are package names' business: Obtain refuses SANs
// that are not canonical DNS names (IP addresses included). It never logs or
// returns key material.
//
// Start with New(Config{...}) per CA directory, then call Obtain per order;
// serve HTTP01Handler on every worker's port 80 when HTTP-01 is used.
package acmeissuer

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/seal"
)

// Config configures an Issuer for one CA directory. The zero value of every
// optional field means its documented default.
type Config struct {
	// Directory is the CA's ACME directory URL. Required.
	Directory string
	// DB holds acme_accounts. Required.
	DB *db.DB
	// Sealer seals ACME account keys at rest. Required.
	Sealer seal.Sealer
	// Solvers maps challenge types (acme.ChallengeTypeHTTP01,
	// acme.ChallengeTypeDNS01, ...) to solvers, e.g. HTTP01Solver and
	// DNS01Solver. At least one is required.
	Solvers map[string]acmez.Solver
	// HTTPClient talks to the CA. Its Transport is wrapped in a
	// RetryAfterTransport (the client is copied, not modified). Default: a
	// client with a 30 s timeout over http.DefaultTransport.
	HTTPClient *http.Client
	// OnRetryAfter, optional, is called by the transport for every 429/503
	// with the server's Retry-After (see RetryAfterTransport).
	OnRetryAfter func(req *http.Request, status int, until time.Time)
	// DefaultPenalty is how long a 429 without Retry-After blocks: its
	// CAError.RetryAfter is then now+DefaultPenalty. Default 5 minutes.
	DefaultPenalty time.Duration
	// Contact lists account contact URLs (mailto:...). Optional.
	Contact []string
	// AccountMode maps tenants to ACME accounts: AccountPerTenant (the
	// default, "") or AccountShared (one account for every tenant).
	AccountMode AccountMode
	// Registrations, optional, is asked before every newAccount (the CA's
	// registration limits; see RegistrationLimiter).
	Registrations RegistrationLimiter
	// EAB, optional, is the CA's External Account Binding (RFC 8555
	// §7.3.4): every account this issuer creates is bound with it (MACKey
	// base64url, as the CA hands it out; caconfig.CA.EAB reads it from its
	// file). Commercial CAs (ZeroSSL, Google Trust Services, Sectigo)
	// require one. Accounts already registered are used as they are.
	EAB *acme.EAB
	// Profile is the ACME profile used when Request.Profile is empty. Empty:
	// such an order names no profile and the CA applies its default.
	Profile string
	// AccountWait is how long a worker that lost the race to create a tenant's
	// account waits for the winner to register it before registering the same
	// key itself. Default 10 s. AccountPoll is its poll interval; default 50 ms.
	AccountWait, AccountPoll time.Duration
	// PollInterval and PollTimeout tune acmez's polling of authorizations and
	// orders when the CA sends no Retry-After. Defaults: acmez's (250 ms, 5 min).
	PollInterval, PollTimeout time.Duration
	// UserAgent is appended to acmez's User-Agent. Default "certfleet".
	UserAgent string
	// Logger receives acmez's debug logs. Default: none.
	Logger *slog.Logger
	// Clock tells the time of Retry-After values. Default: the wall clock.
	Clock clock.Clock
}

// maxSANs is the most names one order may carry (Let's Encrypt's limit).
const maxSANs = 100

// Issuer obtains certificates from one CA. Safe for concurrent use.
type Issuer struct {
	cfg    Config
	client *acme.Client

	mu            sync.Mutex
	accounts      map[string]*accountEntry
	registrations atomic.Int64 // newAccount calls that succeeded (tests)
}

// New validates cfg and returns an Issuer. Errors name the field.
func New(cfg Config) (*Issuer, error) {
	switch {
	case cfg.Directory == "":
		return nil, errors.New("acmeissuer: Config.Directory is required")
	case cfg.DB == nil:
		return nil, errors.New("acmeissuer: Config.DB is required")
	case cfg.Sealer == nil:
		return nil, errors.New("acmeissuer: Config.Sealer is required")
	case len(cfg.Solvers) == 0:
		return nil, errors.New("acmeissuer: Config.Solvers needs at least one challenge solver")
	case cfg.DefaultPenalty < 0, cfg.AccountWait < 0, cfg.AccountPoll < 0, cfg.PollInterval < 0, cfg.PollTimeout < 0:
		return nil, errors.New("acmeissuer: Config durations must not be negative")
	case cfg.EAB != nil && (cfg.EAB.KeyID == "" || cfg.EAB.MACKey == ""):
		return nil, errors.New("acmeissuer: Config.EAB needs a KeyID and a MACKey")
	}
	mode, err := ParseAccountMode(string(cfg.AccountMode))
	if err != nil {
		return nil, fmt.Errorf("acmeissuer: Config.AccountMode: %w", err)
	}
	cfg.AccountMode = mode
	for typ, s := range cfg.Solvers {
		if s == nil {
			return nil, fmt.Errorf("acmeissuer: Config.Solvers[%q] is nil", typ)
		}
	}
	if cfg.DefaultPenalty == 0 {
		cfg.DefaultPenalty = 5 * time.Minute
	}
	if cfg.AccountWait == 0 {
		cfg.AccountWait = 10 * time.Second
	}
	if cfg.AccountPoll == 0 {
		cfg.AccountPoll = 50 * time.Millisecond
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "certfleet"
	}
	cfg.Clock = clock.Or(cfg.Clock)
	hc := &http.Client{Timeout: 30 * time.Second}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		hc = &c
	}
	hc.Transport = &RetryAfterTransport{Base: hc.Transport, Clock: cfg.Clock, OnRetryAfter: cfg.OnRetryAfter}
	return &Issuer{
		cfg: cfg,
		client: &acme.Client{
			Directory:    cfg.Directory,
			HTTPClient:   hc,
			UserAgent:    cfg.UserAgent,
			PollInterval: cfg.PollInterval,
			PollTimeout:  cfg.PollTimeout,
			Logger:       cfg.Logger,
		},
		accounts: map[string]*accountEntry{},
	}, nil
}

func (i *Issuer) now() time.Time { return i.cfg.Clock.Now() }

// Request is one certificate order.
type Request struct {
	// Tenant selects the ACME account ("" is a valid tenant).
	Tenant string
	// SANs are the DNS names of the certificate in the canonical form of
	// package names, which Obtain checks (1-100 names, none repeated).
	// Required.
	SANs []string
	// Profile is the ACME profile to order; empty means Config.Profile.
	// When both are empty the order names no profile and the CA applies its
	// default (the ACME profiles extension: Let's Encrypt's is "classic"; Pebble
	// picks one of its profiles at random). A named profile must be one the
	// CA advertises; a CA that advertises none accepts none.
	Profile string
	// Replaces is the certificate this order renews (ARI, RFC 9773); nil for
	// a new certificate. acmez drops it and retries if the CA says
	// alreadyReplaced.
	Replaces *x509.Certificate
	// KeyType of the new certificate key; empty means ECDSAP256.
	KeyType KeyType
	// Challenges restricts the challenge types tried (each must be in
	// Config.Solvers); empty means every configured one. Wildcard names need
	// dns-01.
	Challenges []string
	// Resume, when set, is the order an earlier attempt at this request
	// placed (what OnOrder received then). Obtain continues it instead of
	// ordering again: it downloads the certificate of a valid order,
	// finalises a ready one with Resume.Key, waits for a processing one and
	// solves the authorizations of a pending one first. An order that cannot
	// be continued (ErrNotResumable: gone, invalid, other names) is left and a
	// new one placed.
	Resume *PendingOrder
	// OnOrder, when set, is called once the CA has created an order (its
	// 201 to newOrder), before any challenge is answered, with the order's URL
	// and the certificate key it will be finalised with. The caller keeps
	// both (the key sealed) so a successor can Resume if this worker dies.
	// It is called for every order Obtain places, so it is also how the
	// caller counts them (NewOrdersPerAccount): none when Obtain continues
	// Resume's order, one for a new order, and one more for each new order
	// after a failed validation that falls back to another challenge type
	// (at most three per call). A transient failure (the CA answering 5xx or
	// unreachable, ctx ending) never places another order: the order is left
	// as it is, authorizations untouched, for a later Obtain to Resume.
	// It runs synchronously inside the order, so it should be quick; its
	// failures are the caller's to log (the order goes on regardless).
	OnOrder func(ctx context.Context, o PendingOrder)
}

// Result is an obtained certificate. PrivateKey is unsealed: the caller seals
// it (seal.SealPrivateKey) and must not log it; Result's String and LogValue
// leave it out.
type Result struct {
	ChainPEM            []byte // leaf first, as the CA sent it
	Leaf                *x509.Certificate
	Serial              string // lower-case hex without leading zeros (big.Int.Text(16)), as events.CertObtained.Serial
	NotBefore, NotAfter time.Time
	ARICertID           string // RFC 9773 certificate identifier, for renewal info and "replaces"
	CertURL             string
	AccountURL          string
	PrivateKey          crypto.Signer
	// Resumed: the certificate came from Request.Resume's order; no order
	// was placed.
	Resumed bool
}

func (r *Result) String() string {
	return fmt.Sprintf("acmeissuer.Result{serial: %s, sans: %v, not_after: %s}", r.Serial, r.Leaf.DNSNames, r.NotAfter.Format(time.RFC3339))
}

// GoString is String, so %#v prints no key either.
func (r *Result) GoString() string { return r.String() }

// LogValue leaves the private key out of structured logs.
func (r *Result) LogValue() slog.Value {
	return slog.GroupValue(slog.String("serial", r.Serial), slog.Any("sans", r.Leaf.DNSNames),
		slog.Time("not_after", r.NotAfter), slog.String("ari_cert_id", r.ARICertID))
}

// Obtain orders, validates, finalises and downloads a certificate for req. It
// blocks until the certificate is issued, the order fails, or ctx ends
// (cancellation leaves the order at the CA as it is; the caller retries,
// with Resume to continue it). Errors wrap
// *CAError (what the CA answered: a 429 or a final 5xx), acme.Problem or
// ErrInvalidRequest; use Classify. Penalties for a 429 are the caller's to
// record.
func (i *Issuer) Obtain(ctx context.Context, req Request) (*Result, error) {
	solvers, err := i.check(req)
	if err != nil {
		return nil, err
	}
	ctx = WithTenant(ctx, req.Tenant) // the DNS-01 solver picks the tenant's provider
	profile := req.Profile
	if profile == "" {
		profile = i.cfg.Profile
	}
	dir, err := i.checkProfile(ctx, profile)
	if err != nil {
		return nil, err
	}
	acct, err := i.Account(ctx, req.Tenant)
	if err != nil {
		return nil, err
	}
	res, err := i.obtainAs(ctx, acct, req, solvers, profile, dir)
	if !accountGone(err) {
		return res, err
	}
	// The CA no longer knows the stored account (a CA that lost its state,
	// an account deactivated by its operator): register the tenant's key
	// again, record the new URL for the fleet, and try once more.
	if acct, err = i.reregister(ctx, req.Tenant, acct); err != nil {
		return nil, err
	}
	return i.obtainAs(ctx, acct, req, solvers, profile, dir)
}

// accountGone reports whether the CA answered that the account does not exist.
func accountGone(err error) bool {
	var p acme.Problem
	return errors.As(err, &p) && p.Type == acme.ProblemTypeAccountDoesNotExist
}

// obtainAs is Obtain with the account known: resume the recorded order or
// place a new one.
func (i *Issuer) obtainAs(ctx context.Context, acct acme.Account, req Request, solvers map[string]acmez.Solver, profile string, dir acme.Directory) (*Result, error) {
	if req.Resume != nil {
		res, err := i.resume(ctx, acct, req, solvers, *req.Resume)
		if err == nil {
			res.AccountURL, res.Resumed = acct.Location, true
			return res, nil
		}
		if !errors.Is(err, ErrNotResumable) {
			return nil, fmt.Errorf("acmeissuer: obtaining a certificate for %v: %w", req.SANs, err)
		}
		if i.cfg.Logger != nil {
			i.cfg.Logger.Info("order not resumable; placing a new one", "order", req.Resume.URL, "error", err)
		}
	}
	key, err := req.KeyType.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("acmeissuer: generating the certificate key: %w", err)
	}
	if _, err := acmez.NewCSR(key, req.SANs); err != nil {
		return nil, fmt.Errorf("%w: making a CSR for %v: %v", ErrInvalidRequest, req.SANs, err)
	}
	cctx, c := withCapture(ctx)
	if req.OnOrder != nil {
		c.newOrderURL = dir.NewOrder
		c.onOrder = func(url string) { req.OnOrder(ctx, PendingOrder{URL: url, Key: key}) }
	}
	res, err := i.orderNew(cctx, acct, req, solvers, profile, key)
	if err != nil {
		err = annotate(err, c, i.now(), i.cfg.DefaultPenalty)
		return nil, fmt.Errorf("acmeissuer: obtaining a certificate for %v: %w", req.SANs, err)
	}
	res.AccountURL = acct.Location
	return res, nil
}

// check validates req and picks its solvers.
func (i *Issuer) check(req Request) (map[string]acmez.Solver, error) {
	if err := names.ValidateList(req.SANs, maxSANs); err != nil {
		return nil, fmt.Errorf("%w: SANs: %w", ErrInvalidRequest, err)
	}
	if !req.KeyType.Valid() {
		return nil, fmt.Errorf("%w: unknown key type %q", ErrInvalidRequest, string(req.KeyType))
	}
	solvers := i.cfg.Solvers
	if len(req.Challenges) > 0 {
		solvers = make(map[string]acmez.Solver, len(req.Challenges))
		for _, typ := range req.Challenges {
			s, ok := i.cfg.Solvers[typ]
			if !ok {
				return nil, fmt.Errorf("%w: no solver for challenge type %q", ErrInvalidRequest, typ)
			}
			solvers[typ] = s
		}
	}
	// A wildcard is validated with dns-01 only (RFC 8555 §7.1.3): refuse
	// here rather than let the order fail at the CA.
	if _, ok := solvers[acme.ChallengeTypeDNS01]; !ok {
		for _, san := range req.SANs {
			if strings.HasPrefix(san, "*.") {
				return nil, fmt.Errorf("%w: wildcard %s can only be validated with dns-01, and this issuer may use only %v (configure a DNS-01 provider)",
					ErrInvalidRequest, san, sortedKeys(solvers))
			}
		}
	}
	return solvers, nil
}

// checkProfile checks a named profile against the ones the CA advertises;
// an empty one is always fine (the CA's default). It returns the directory.
func (i *Issuer) checkProfile(ctx context.Context, profile string) (acme.Directory, error) {
	cctx, c := withCapture(ctx)
	dir, err := i.client.GetDirectory(cctx)
	if err != nil {
		return dir, fmt.Errorf("acmeissuer: reading the directory %s: %w", i.cfg.Directory, annotate(err, c, i.now(), i.cfg.DefaultPenalty))
	}
	var offered map[string]string
	if dir.Meta != nil {
		offered = dir.Meta.Profiles
	}
	switch _, ok := offered[profile]; {
	case profile == "":
		// The CA's default, whether or not it offers profiles.
	case len(offered) == 0:
		return dir, fmt.Errorf("%w: profile %q named but the CA offers no profiles", ErrInvalidRequest, profile)
	case !ok:
		return dir, fmt.Errorf("%w: profile %q is not offered by the CA (offers %v)", ErrInvalidRequest, profile, sortedKeys(offered))
	}
	return dir, nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// resultFrom parses the chain and checks the leaf is for key.
func resultFrom(cert acme.Certificate, key crypto.Signer) (*Result, error) {
	block, _ := pem.Decode(cert.ChainPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("chain has no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the leaf: %w", err)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("the leaf is not for the order's key")
	}
	ariID, err := acme.ARIUniqueIdentifier(leaf)
	if err != nil {
		return nil, fmt.Errorf("computing the ARI certificate id: %w", err)
	}
	return &Result{
		ChainPEM:   cert.ChainPEM,
		Leaf:       leaf,
		Serial:     leaf.SerialNumber.Text(16),
		NotBefore:  leaf.NotBefore,
		NotAfter:   leaf.NotAfter,
		ARICertID:  ariID,
		CertURL:    cert.URL,
		PrivateKey: key,
	}, nil
}
