package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// OrderKind says whether an order is new issuance or a renewal, which
// decides the exemptions that apply.
type OrderKind int

const (
	// NewOrder is issuance for a SAN set without a current certificate.
	NewOrder OrderKind = iota
	// Renewal is an order for exactly the SAN set of an existing certificate.
	Renewal
	// ARIRenewal is a Renewal that names the certificate it replaces and is
	// inside the CA's ARI window.
	ARIRenewal
)

// Order is what an order is about, for deriving its buckets.
type Order struct {
	Directory string
	Account   string
	SANs      []string
	Kind      OrderKind
}

// Mode says what a transaction does to its bucket.
type Mode int

const (
	// ModeSpend checks the cost against the bucket and spends it if it fits.
	ModeSpend Mode = iota
	// ModeSpendNoCheck spends the cost whether or not it fits.
	ModeSpendNoCheck
	// ModeCheck only checks; nothing is spent.
	ModeCheck
)

func (m Mode) String() string {
	switch m {
	case ModeSpend:
		return "spend"
	case ModeSpendNoCheck:
		return "spend-no-check"
	case ModeCheck:
		return "check"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Transaction is one bucket an operation touches.
type Transaction struct {
	Directory string
	Name      Name
	// Value is the bucket's subject: an account id, a registered domain, a
	// SAN set hash, "account:fqdn", or "*" for the fleet budget.
	Value string
	// Account and Domain are what overrides can match besides Value.
	Account string
	Domain  string
	Cost    int64
	Mode    Mode

	caID string
}

// Key is the bucket key: CA id, limit name and value.
func (t Transaction) Key() string { return t.caID + ":" + string(t.Name) + ":" + t.Value }

// OrderTransactions derives the buckets an order spends at the CA named by
// its directory: the fleet budget, NewOrdersPerAccount, CertificatesPerDomain
// once per registered domain, CertificatesPerFQDNSet, and a check (no spend)
// of FailedAuthorizationsPerDomainPerAccount per name. Renewal exemptions of
// the CA are applied. SANs are normalised (IDNA, lower case, no trailing dot)
// and must be valid DNS names or IP addresses.
func (c *Catalogue) OrderTransactions(o Order) ([]Transaction, error) {
	ca, ok := c.byDirectory[o.Directory]
	if !ok {
		return nil, fmt.Errorf("%w: no limits configured for CA directory %q", ErrInvalidRequest, o.Directory)
	}
	if o.Account == "" {
		return nil, fmt.Errorf("%w: order has no account", ErrInvalidRequest)
	}
	if len(o.SANs) == 0 || len(o.SANs) > 100 {
		return nil, fmt.Errorf("%w: order has %d SANs, want 1-100", ErrInvalidRequest, len(o.SANs))
	}
	names := make([]string, 0, len(o.SANs))
	for _, s := range o.SANs {
		n, err := NormalizeSAN(s)
		if err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	slices.Sort(names)
	names = slices.Compact(names)

	var txns []Transaction
	add := func(n Name, value, account, domain string, cost int64, mode Mode) {
		lc, ok := ca.Limits[n]
		if !ok {
			return
		}
		exempt := Enforce
		switch o.Kind {
		case Renewal:
			exempt = lc.Renewal
		case ARIRenewal:
			exempt = lc.ARIRenewal
		}
		switch {
		case exempt == Skip:
			return
		case exempt == SpendOnly && mode == ModeSpend:
			mode = ModeSpendNoCheck
		case exempt == SpendOnly && mode == ModeCheck:
			return
		}
		txns = append(txns, Transaction{Directory: ca.Directory, caID: ca.ID, Name: n, Value: value,
			Account: account, Domain: domain, Cost: cost, Mode: mode})
	}
	add(FleetOrdersPerSecond, "*", "", "", 1, ModeSpend)
	add(NewOrdersPerAccount, o.Account, o.Account, "", 1, ModeSpend)
	seen := map[string]bool{}
	for _, n := range names {
		rd := registeredDomain(n)
		if !seen[rd] {
			seen[rd] = true
			add(CertificatesPerDomain, rd, o.Account, rd, 1, ModeSpend)
		}
	}
	add(CertificatesPerFQDNSet, FQDNSetHash(names), o.Account, "", 1, ModeSpend)
	// One check per authorization host: a wildcard and its base name
	// (example.com and *.example.com) are both authorized as example.com,
	// and a batch naming one bucket twice is refused by the store.
	clear(seen)
	for _, n := range names {
		host := strings.TrimPrefix(n, "*.")
		if !seen[host] {
			seen[host] = true
			add(FailedAuthorizationsPerDomainPerAccount, o.Account+":"+host, o.Account, host, 1, ModeCheck)
		}
	}
	return txns, nil
}

// FailedAuthorizationTransaction is the bucket to spend when the CA reports a
// failed authorization of domain for account.
func (c *Catalogue) FailedAuthorizationTransaction(directory, account, domain string) (Transaction, error) {
	ca, ok := c.byDirectory[directory]
	if !ok {
		return Transaction{}, fmt.Errorf("%w: no limits configured for CA directory %q", ErrInvalidRequest, directory)
	}
	if _, ok := ca.Limits[FailedAuthorizationsPerDomainPerAccount]; !ok {
		return Transaction{}, fmt.Errorf("%w: CA %s has no %s limit", ErrInvalidRequest, ca.ID, FailedAuthorizationsPerDomainPerAccount)
	}
	host, err := NormalizeSAN(domain)
	if err != nil {
		return Transaction{}, err
	}
	host = strings.TrimPrefix(host, "*.")
	return Transaction{Directory: directory, caID: ca.ID, Name: FailedAuthorizationsPerDomainPerAccount,
		Value: account + ":" + host, Account: account, Domain: host, Cost: 1, Mode: ModeSpendNoCheck}, nil
}

// Transaction returns a transaction for an arbitrary bucket of a CA, for
// penalties and admin tools.
func (c *Catalogue) Transaction(directory string, n Name, value string) (Transaction, error) {
	ca, ok := c.byDirectory[directory]
	if !ok {
		return Transaction{}, fmt.Errorf("%w: no limits configured for CA directory %q", ErrInvalidRequest, directory)
	}
	if _, ok := ca.Limits[n]; !ok {
		return Transaction{}, fmt.Errorf("%w: CA %s has no limit %q", ErrInvalidRequest, ca.ID, n)
	}
	return Transaction{Directory: directory, caID: ca.ID, Name: n, Value: value, Cost: 1}, nil
}

// NormalizeSAN returns the canonical form of a SAN: an IP address in its
// canonical text form, or a DNS name in lower-case ASCII (IDNA) without a
// trailing dot, optionally with a leading "*." wildcard label. Names must
// be below a public suffix.
func NormalizeSAN(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.Unmap().String(), nil
	}
	s = strings.TrimSuffix(strings.ToLower(s), ".")
	wild := strings.HasPrefix(s, "*.")
	host := strings.TrimPrefix(s, "*.")
	a, err := idna.Lookup.ToASCII(host)
	if err != nil || !isDNSName(a) {
		return "", fmt.Errorf("%w: SAN %q is not a valid DNS name", ErrInvalidRequest, truncate(s, 64))
	}
	if _, err := publicsuffix.EffectiveTLDPlusOne(a); err != nil {
		return "", fmt.Errorf("%w: SAN %q is a public suffix or has none", ErrInvalidRequest, a)
	}
	if wild {
		return "*." + a, nil
	}
	return a, nil
}

// registeredDomain is the bucket value of CertificatesPerDomain: the
// registered domain (eTLD+1) of a normalised DNS name, or for an IP address
// the address itself (an IPv6 address counts per /64).
func registeredDomain(n string) string {
	if ip, err := netip.ParseAddr(n); err == nil {
		if ip.Is6() {
			p, _ := ip.Prefix(64)
			return p.String()
		}
		return ip.String()
	}
	rd, err := publicsuffix.EffectiveTLDPlusOne(strings.TrimPrefix(n, "*."))
	if err != nil {
		return n // unreachable for names that passed NormalizeSAN
	}
	return rd
}

// FQDNSetHash identifies a SAN set: hex SHA-256 of the sorted, de-duplicated,
// normalised names joined by commas.
func FQDNSetHash(normalised []string) string {
	s := slices.Clone(normalised)
	slices.Sort(s)
	s = slices.Compact(s)
	h := sha256.Sum256([]byte(strings.Join(s, ",")))
	return hex.EncodeToString(h[:])
}

// isDNSName reports whether s is a syntactically valid ASCII host name.
func isDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
