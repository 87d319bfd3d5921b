package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// registrationSpender is the part of *ratelimit.Limiter registrations use.
type registrationSpender interface {
	// Spend spends every transaction, all or nothing.
	Spend(ctx context.Context, txns []ratelimit.Transaction) (ratelimit.Result, error)
}

// registrations is acmeissuer's RegistrationLimiter over the fleet's
// registration buckets of each CA (ratelimit's RegistrationTransactions:
// NewRegistrationsPerIPAddress keyed by the address the CA sees the workers
// connect from, and NewRegistrationsPerIPv6Range for an IPv6 one), shared by
// every worker through the limiter's store.
type registrations struct {
	limiter   registrationSpender
	catalogue *ratelimit.Catalogue
	egress    netip.Addr // -egress-address
	clock     clock.Clock
}

var _ acmeissuer.RegistrationLimiter = registrations{}

// SpendRegistration spends one registration at directory, or reports when
// one will fit.
func (r registrations) SpendRegistration(ctx context.Context, directory string) (bool, time.Time, error) {
	txns, err := r.catalogue.RegistrationTransactions(directory, r.egress)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("the registration limits of %s: %w", directory, err)
	}
	if len(txns) == 0 { // a CA without registration limits
		return true, time.Time{}, nil
	}
	res, err := r.limiter.Spend(ctx, txns)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("spending a registration at %s: %w", directory, err)
	}
	if res.Allowed {
		return true, time.Time{}, nil
	}
	return false, clock.Or(r.clock).Now().Add(res.RetryIn), nil
}
