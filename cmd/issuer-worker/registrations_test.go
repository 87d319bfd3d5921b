package main

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/ratelimit"
)

// Let's Encrypt's registration limits through the fleet's buckets: 10
// registrations per 3 hours from one IPv4 address, the eleventh deferred by
// one emission interval (18 minutes); an IPv6 address spends its /48 too,
// and a CA without those limits is never deferred.
func TestRegistrations(t *testing.T) {
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	cat := ratelimit.DefaultCatalogue()
	lim := ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: cat, Clock: clk})
	ctx := context.Background()
	v4 := registrations{limiter: lim, catalogue: cat, egress: netip.MustParseAddr("192.0.2.7"), clock: clk}
	for n := 1; n <= 10; n++ {
		if ok, _, err := v4.SpendRegistration(ctx, ratelimit.LetsEncryptDirectory); !ok || err != nil {
			t.Fatalf("registration %d: %v, %v; want allowed", n, ok, err)
		}
	}
	ok, at, err := v4.SpendRegistration(ctx, ratelimit.LetsEncryptDirectory)
	if ok || err != nil || !at.Equal(clk.Now().Add(18*time.Minute)) {
		t.Fatalf("eleventh registration: %v until %v (%v); want deferred until %v", ok, at, err, clk.Now().Add(18*time.Minute))
	}
	if ok, _, err := v4.SpendRegistration(ctx, ratelimit.LetsEncryptStagingDirectory); !ok || err != nil {
		t.Errorf("another CA's buckets: %v, %v; want allowed", ok, err)
	}

	// Two addresses of one /48: each has its own 10, the range its 500.
	a := registrations{limiter: lim, catalogue: cat, egress: netip.MustParseAddr("2001:db8:1::1"), clock: clk}
	b := registrations{limiter: lim, catalogue: cat, egress: netip.MustParseAddr("2001:db8:1:2::1"), clock: clk}
	for n := 0; n < 10; n++ {
		for _, r := range []registrations{a, b} {
			if ok, _, err := r.SpendRegistration(ctx, ratelimit.LetsEncryptDirectory); !ok || err != nil {
				t.Fatalf("IPv6 registration from %s: %v, %v", r.egress, ok, err)
			}
		}
	}
	if ok, _, _ := a.SpendRegistration(ctx, ratelimit.LetsEncryptDirectory); ok {
		t.Error("an IPv6 address's eleventh registration was allowed")
	}

	unlimited, err := cat.With(ratelimit.CA{ID: "lab", Directory: "https://lab.test/dir", Limits: map[ratelimit.Name]ratelimit.LimitConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	lab := registrations{limiter: ratelimit.NewLimiter(ratelimit.LimiterConfig{Store: ratelimit.NewMemStore(), Catalogue: unlimited, Clock: clk}),
		catalogue: unlimited, egress: netip.MustParseAddr("192.0.2.7"), clock: clk}
	for n := 0; n < 20; n++ {
		if ok, _, err := lab.SpendRegistration(ctx, "https://lab.test/dir"); !ok || err != nil {
			t.Fatalf("a CA without registration limits: %v, %v", ok, err)
		}
	}
	if _, _, err := (registrations{limiter: lim, catalogue: cat, clock: clk}).SpendRegistration(ctx, ratelimit.LetsEncryptDirectory); err == nil {
		t.Error("no egress address: want an error")
	}
}
