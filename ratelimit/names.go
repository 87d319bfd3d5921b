package ratelimit

import "slices"

// Name identifies a kind of limit. The set is closed: configuration and
// overrides naming anything else are rejected.
type Name string

// The limits certfleet models. The first four mirror Let's Encrypt's
// published limits; FleetOrdersPerSecond is certfleet's own budget of orders
// per second across the whole fleet for one CA.
const (
	NewOrdersPerAccount                     Name = "NewOrdersPerAccount"
	CertificatesPerDomain                   Name = "CertificatesPerDomain"
	CertificatesPerFQDNSet                  Name = "CertificatesPerFQDNSet"
	FailedAuthorizationsPerDomainPerAccount Name = "FailedAuthorizationsPerDomainPerAccount"
	FleetOrdersPerSecond                    Name = "FleetOrdersPerSecond"
)

// Names lists every known limit name in a fixed order.
var Names = []Name{NewOrdersPerAccount, CertificatesPerDomain, CertificatesPerFQDNSet,
	FailedAuthorizationsPerDomainPerAccount, FleetOrdersPerSecond}

// Valid reports whether n is a known limit name.
func (n Name) Valid() bool { return slices.Contains(Names, n) }

// CountedAtIssuance reports whether the CA counts limit n when it issues a
// certificate rather than when the order is placed (Let's Encrypt's
// CertificatesPerDomain and CertificatesPerFQDNSet): spends of these may
// carry a lead (Transaction.Lead, WithIssuanceLead).
func (n Name) CountedAtIssuance() bool {
	return n == CertificatesPerDomain || n == CertificatesPerFQDNSet
}
