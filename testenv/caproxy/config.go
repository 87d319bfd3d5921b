package caproxy

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
)

// Limit is a Boulder-style GCRA limit: a burst of Count, refilled at Count per
// Period (one every Period/Count). Zero Count: unlimited.
type Limit struct {
	Count  int
	Period time.Duration
}

// Limits are the CA's order and certificate limits, named as Boulder names
// them. NewOrdersPerAccount is spent at newOrder; the two certificate limits
// are checked at newOrder and spent at issuance (see the package doc).
type Limits struct {
	OrdersPerAccount Limit // NewOrdersPerAccount, keyed by the JWS kid (account URL)
	OrdersPerDomain  Limit // CertificatesPerDomain, keyed by each registered domain (eTLD+1, "*." stripped)
	OrdersPerFQDNSet Limit // CertificatesPerFQDNSet, keyed by the sorted, lower-cased, de-duplicated identifier set
}

// Faults are the fractions of eligible requests (every newOrder, or every POST
// with AllPOSTs) answered with a fault instead of Pebble's answer. One roll per
// request decides, in this order: RateLimited, ServerError, Timeout, Slow; the
// fractions must sum to at most 1.
type Faults struct {
	// RateLimited is the fraction answered 429 rateLimited without reaching
	// Pebble, with Boulder's exact-set-of-identifiers detail (so the penalty
	// concerns that identifier set).
	RateLimited float64
	// RetryAfter is the Retry-After of injected 429s, sent in whole seconds,
	// rounded up, at least 1.
	RetryAfter time.Duration
	// ServerError is the fraction answered 500 serverInternal without
	// reaching Pebble.
	ServerError float64
	// ServerErrorRetryAfter, when positive, is sent as Retry-After on
	// injected 500s (Boulder sends 60 s on its 500s); zero sends none.
	ServerErrorRetryAfter time.Duration
	// Timeout is the fraction held for TimeoutHold (or until the client goes
	// or the proxy closes) and then dropped without a response, without
	// reaching Pebble.
	Timeout     float64
	TimeoutHold time.Duration
	// Slow is the fraction delayed by SlowDelay and then handled normally.
	Slow      float64
	SlowDelay time.Duration
	// AllPOSTs applies the faults to every POST, not only newOrder. Clients
	// then see refused finalizes, polls and challenge answers, and may create
	// orders again to recover: orders per certificate are no longer one.
	AllPOSTs bool
	// UnavailablePolls, when positive, answers that many polls of each
	// authorization 503 serverInternal without reaching Pebble: every
	// POST-as-GET of an authorization of an order made through the proxy
	// after its first (the fetch before a challenge is answered), up to
	// UnavailablePolls of them. acmez gives up a poll after three 5xx in a
	// row, so 3 makes one poll fail. Independent of the dice.
	UnavailablePolls int
}

// Config configures Start.
type Config struct {
	Upstream   string // Pebble's directory URL, e.g. testenv Settings.ACMEDirectory
	UpstreamCA string // PEM file trusted for the upstream's HTTPS (Settings.ACMETLSCA); empty: system roots
	Listen     string // default "127.0.0.1:0"
	Limits     Limits
	Faults     Faults
	// Seed seeds the fault dice (math/rand/v2 PCG): the same seed gives the
	// same sequence of decisions.
	Seed uint64
	// Clock is the proxy's clock for limits, penalties and Stats; default
	// the wall clock. Delays (TimeoutHold, SlowDelay) always use real time.
	Clock clock.Clock
}

// Validate checks the limits: no negative Count, a positive Period wherever
// Count is positive.
func (l Limits) Validate() error {
	for _, f := range []struct {
		name  string
		limit Limit
	}{
		{"OrdersPerAccount", l.OrdersPerAccount},
		{"OrdersPerDomain", l.OrdersPerDomain},
		{"OrdersPerFQDNSet", l.OrdersPerFQDNSet},
	} {
		switch {
		case f.limit.Count < 0:
			return fmt.Errorf("caproxy: Limits.%s.Count is %d; want 0 (unlimited) or more", f.name, f.limit.Count)
		case f.limit.Count > 0 && f.limit.Period <= 0:
			return fmt.Errorf("caproxy: Limits.%s.Period is %v; want a positive period when Count is %d", f.name, f.limit.Period, f.limit.Count)
		case f.limit.Count > 0 && f.limit.Period/time.Duration(f.limit.Count) <= 0:
			return fmt.Errorf("caproxy: Limits.%s: Period %v is shorter than Count %d nanoseconds", f.name, f.limit.Period, f.limit.Count)
		}
	}
	return nil
}

// Validate checks the faults: every fraction within [0, 1], their sum at most
// 1, no negative duration.
func (f Faults) Validate() error {
	sum := 0.0
	for _, fr := range []struct {
		name string
		v    float64
	}{
		{"RateLimited", f.RateLimited},
		{"ServerError", f.ServerError},
		{"Timeout", f.Timeout},
		{"Slow", f.Slow},
	} {
		if math.IsNaN(fr.v) || fr.v < 0 || fr.v > 1 {
			return fmt.Errorf("caproxy: Faults.%s is %v; want a fraction between 0 and 1", fr.name, fr.v)
		}
		sum += fr.v
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("caproxy: Faults fractions RateLimited+ServerError+Timeout+Slow sum to %v; want at most 1", sum)
	}
	if f.UnavailablePolls < 0 {
		return fmt.Errorf("caproxy: Faults.UnavailablePolls is %d; want 0 or more", f.UnavailablePolls)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"RetryAfter", f.RetryAfter},
		{"ServerErrorRetryAfter", f.ServerErrorRetryAfter},
		{"TimeoutHold", f.TimeoutHold},
		{"SlowDelay", f.SlowDelay},
	} {
		if d.v < 0 {
			return fmt.Errorf("caproxy: Faults.%s is %v; want 0 or more", d.name, d.v)
		}
	}
	return nil
}

// Validate checks the whole configuration without touching the network.
func (c Config) Validate() error {
	if c.Upstream == "" {
		return errors.New("caproxy: Config.Upstream is empty; want Pebble's directory URL")
	}
	u, err := url.Parse(c.Upstream)
	if err != nil {
		return fmt.Errorf("caproxy: Config.Upstream: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("caproxy: Config.Upstream is %q; want an https:// directory URL", c.Upstream)
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	return c.Faults.Validate()
}
