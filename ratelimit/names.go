package ratelimit

import "slices"

// Name identifies a kind of limit. The set is closed: configuration and
// overrides naming anything else are rejected.
type Name string

// The limits certfleet models. All but FleetOrdersPerSecond mirror Let's
// Encrypt's published limits; FleetOrdersPerSecond is certfleet's own budget
// of orders per second across the whole fleet for one CA. The two
// registration limits are spent by account registrations
// (Catalogue.RegistrationTransactions), keyed by the worker's egress address.
const (
	NewOrdersPerAccount                     Name = "NewOrdersPerAccount"
	CertificatesPerDomain                   Name = "CertificatesPerDomain"
	CertificatesPerFQDNSet                  Name = "CertificatesPerFQDNSet"
	FailedAuthorizationsPerDomainPerAccount Name = "FailedAuthorizationsPerDomainPerAccount"
	FleetOrdersPerSecond                    Name = "FleetOrdersPerSecond"
	NewRegistrationsPerIPAddress            Name = "NewRegistrationsPerIPAddress"
	NewRegistrationsPerIPv6Range            Name = "NewRegistrationsPerIPv6Range"
)

// Names lists every known limit name in a fixed order.
var Names = []Name{NewOrdersPerAccount, CertificatesPerDomain, CertificatesPerFQDNSet,
	FailedAuthorizationsPerDomainPerAccount, FleetOrdersPerSecond,
	NewRegistrationsPerIPAddress, NewRegistrationsPerIPv6Range}

// Valid reports whether n is a known limit name.
func (n Name) Valid() bool { return slices.Contains(Names, n) }

// CountedAtIssuance reports whether the CA counts limit n when it issues a
// certificate rather than when the order is placed (Let's Encrypt's
// CertificatesPerDomain and CertificatesPerFQDNSet): spends of these may
// carry a lead (Transaction.Lead, WithIssuanceLead).
func (n Name) CountedAtIssuance() bool {
	return n == CertificatesPerDomain || n == CertificatesPerFQDNSet
}
