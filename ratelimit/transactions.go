package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certfleet/certfleet/names"
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
	// SAN set hash, "account:fqdn", "*" for the fleet budget, or for the
	// registration limits the worker's egress address or its IPv6 /48.
	Value string
	// Account and Domain are what overrides can match besides Value.
	Account string
	Domain  string
	Cost    int64
	Mode    Mode
	// Lead says the CA counts this spend Lead after the worker makes it
	// (see Request.Lead): set it, for instance with WithIssuanceLead, on the
	// limits the CA counts at issuance to an order's expected latency. Zero
	// records a spend when it is made.
	Lead time.Duration

	caID string
}

// Key is the bucket key: CA id, limit name and value.
func (t Transaction) Key() string { return t.caID + ":" + string(t.Name) + ":" + t.Value }

// WithIssuanceLead returns a copy of txns in which the transactions of the
// limits the CA counts at issuance (Name.CountedAtIssuance:
// CertificatesPerDomain and CertificatesPerFQDNSet) carry lead, the time
// between placing an order and the CA issuing its certificate; the others
// are unchanged. Spending the copy keeps the worker's certificate buckets
// from running ahead of the CA's at equal limits: Let's Encrypt counts a
// certificate when it issues it, not when the order is created.
func WithIssuanceLead(txns []Transaction, lead time.Duration) []Transaction {
	out := slices.Clone(txns)
	for i := range out {
		if out[i].Name.CountedAtIssuance() {
			out[i].Lead = lead
		}
	}
	return out
}

// maxSANs is the most names one order may carry (Let's Encrypt's limit).
const maxSANs = 100

// OrderTransactions derives the buckets an order spends at the CA named by
// its directory: the fleet budget, NewOrdersPerAccount, CertificatesPerDomain
// once per registered domain, CertificatesPerFQDNSet, and a check (no spend)
// of FailedAuthorizationsPerDomainPerAccount per authorization host. Renewal
// exemptions of the CA are applied. SANs are canonicalised by package names
// (IDNA, lower case); one names refuses (an IP address among them) makes the
// order invalid.
func (c *Catalogue) OrderTransactions(o Order) ([]Transaction, error) {
	ca, sans, err := c.order(o)
	if err != nil {
		return nil, err
	}
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
		txns = append(txns, ca.transaction(n, value, account, domain, cost, mode))
	}
	add(FleetOrdersPerSecond, "*", "", "", 1, ModeSpend)
	add(NewOrdersPerAccount, o.Account, o.Account, "", 1, ModeSpend)
	seen := map[string]bool{}
	for _, n := range sans {
		rd := registeredDomain(n)
		if !seen[rd] {
			seen[rd] = true
			add(CertificatesPerDomain, rd, o.Account, rd, 1, ModeSpend)
		}
	}
	add(CertificatesPerFQDNSet, FQDNSetHash(sans), o.Account, "", 1, ModeSpend)
	for _, host := range authorizationHosts(sans) {
		add(FailedAuthorizationsPerDomainPerAccount, o.Account+":"+host, o.Account, host, 1, ModeCheck)
	}
	return txns, nil
}

// RegistrationTransactions derives the buckets an ACME account
// registration (newAccount) spends at the CA named by directory, from the
// address the CA sees the worker connect from (egress, from the worker's
// configuration): NewRegistrationsPerIPAddress keyed by the address, and,
// for an IPv6 address, NewRegistrationsPerIPv6Range keyed by its /48
// ("2001:db8:1::/48"), as Let's Encrypt counts them. An IPv4-mapped IPv6
// address counts as its IPv4 address. A CA without these limits yields no
// transaction; an invalid or unspecified egress is an ErrInvalidRequest.
// The fleet budget is not spent: a registration is not an order.
func (c *Catalogue) RegistrationTransactions(directory string, egress netip.Addr) ([]Transaction, error) {
	ca, ok := c.byDirectory[directory]
	if !ok {
		return nil, fmt.Errorf("%w: no limits configured for CA directory %q", ErrInvalidRequest, directory)
	}
	egress = egress.Unmap()
	if !egress.IsValid() || egress.IsUnspecified() {
		return nil, fmt.Errorf("%w: registration needs the worker's egress address, got %q", ErrInvalidRequest, egress)
	}
	var txns []Transaction
	add := func(n Name, value string) {
		if _, ok := ca.Limits[n]; ok {
			txns = append(txns, ca.transaction(n, value, "", "", 1, ModeSpend))
		}
	}
	add(NewRegistrationsPerIPAddress, egress.WithZone("").String())
	if egress.Is6() {
		add(NewRegistrationsPerIPv6Range, netip.PrefixFrom(egress.WithZone(""), 48).Masked().String())
	}
	return txns, nil
}

// order checks o and returns its CA and its canonical SAN set.
func (c *Catalogue) order(o Order) (*CA, []string, error) {
	ca, ok := c.byDirectory[o.Directory]
	if !ok {
		return nil, nil, fmt.Errorf("%w: no limits configured for CA directory %q", ErrInvalidRequest, o.Directory)
	}
	if o.Account == "" {
		return nil, nil, fmt.Errorf("%w: order has no account", ErrInvalidRequest)
	}
	if len(o.SANs) == 0 || len(o.SANs) > maxSANs {
		return nil, nil, fmt.Errorf("%w: order has %d SANs, want 1-%d", ErrInvalidRequest, len(o.SANs), maxSANs)
	}
	sans, err := names.NormalizeSet(o.SANs, maxSANs)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return ca, sans, nil
}

// authorizationHosts are the names the CA authorizes for a canonical SAN
// set, once each: a wildcard and its base name (example.com and
// *.example.com) are both authorized as example.com, and a batch naming one
// bucket twice is refused by the store.
func authorizationHosts(sans []string) []string {
	var hosts []string
	for _, n := range sans {
		if host := strings.TrimPrefix(n, "*."); !slices.Contains(hosts, host) {
			hosts = append(hosts, host)
		}
	}
	return hosts
}

func (ca *CA) transaction(n Name, value, account, domain string, cost int64, mode Mode) Transaction {
	return Transaction{Directory: ca.Directory, caID: ca.ID, Name: n, Value: value,
		Account: account, Domain: domain, Cost: cost, Mode: mode}
}

// failedAuthorizationTransactions are the buckets a failed validation of
// the order spends (without check): one per authorization host, whatever the
// order's kind, as the CA counts every failed validation. None when the CA
// has no FailedAuthorizationsPerDomainPerAccount limit.
func (c *Catalogue) failedAuthorizationTransactions(o Order) ([]Transaction, error) {
	ca, sans, err := c.order(o)
	if err != nil {
		return nil, err
	}
	if _, ok := ca.Limits[FailedAuthorizationsPerDomainPerAccount]; !ok {
		return nil, nil
	}
	var txns []Transaction
	for _, host := range authorizationHosts(sans) {
		txns = append(txns, ca.transaction(FailedAuthorizationsPerDomainPerAccount, o.Account+":"+host, o.Account, host, 1, ModeSpendNoCheck))
	}
	return txns, nil
}

// countsAsFailedAuthorization reports whether an order that failed with the
// ACME problem type problemType failed a validation, which the CA counts
// against FailedAuthorizationsPerDomainPerAccount.
func countsAsFailedAuthorization(problemType string) bool {
	switch problemType {
	case acme.ProblemTypeUnauthorized, acme.ProblemTypeIncorrectResponse, acme.ProblemTypeConnection,
		acme.ProblemTypeDNS, acme.ProblemTypeTLS, acme.ProblemTypeCAA:
		return true
	}
	return false
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

// registeredDomain is the bucket value of CertificatesPerDomain for a
// canonical name: its registered domain (package names), or, for a name that
// is itself a public suffix of the list's private section ("github.io",
// which names accepts), the name itself, as Boulder counts it.
func registeredDomain(n string) string {
	host := strings.TrimPrefix(n, "*.")
	if rd, err := names.RegisteredDomain(host); err == nil {
		return rd
	}
	return host
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
