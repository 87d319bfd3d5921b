package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/names"
)

const leDir = "https://acme-v02.api.letsencrypt.org/directory"

func testCatalogue(t testing.TB) *Catalogue {
	t.Helper()
	c, err := NewCatalogue(CA{ID: "le", Directory: leDir, Limits: LetsEncryptLimits()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type txnSummary struct {
	Key  string
	Mode Mode
}

func summarize(txns []Transaction) []txnSummary {
	out := make([]txnSummary, len(txns))
	for i, t := range txns {
		out[i] = txnSummary{t.Key(), t.Mode}
	}
	return out
}

func TestOrderTransactions(t *testing.T) {
	c := testCatalogue(t)
	sans := []string{"WWW.Example.COM", "example.com", "shop.example.co.uk", "www.example.com"}
	set := FQDNSetHash([]string{"example.com", "shop.example.co.uk", "www.example.com"})
	common := []txnSummary{
		{"le:FleetOrdersPerSecond:*", ModeSpend},
		{"le:NewOrdersPerAccount:acct-1", ModeSpend},
	}
	failed := []txnSummary{
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:example.com", ModeCheck},
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:shop.example.co.uk", ModeCheck},
		{"le:FailedAuthorizationsPerDomainPerAccount:acct-1:www.example.com", ModeCheck},
	}
	tests := []struct {
		kind OrderKind
		want []txnSummary
	}{
		{NewOrder, slices.Concat(common, []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpend},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpend},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
		{Renewal, slices.Concat(common, []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpendNoCheck},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpendNoCheck},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
		{ARIRenewal, slices.Concat(common[:1], []txnSummary{
			{"le:CertificatesPerDomain:example.com", ModeSpendNoCheck},
			{"le:CertificatesPerDomain:example.co.uk", ModeSpendNoCheck},
			{"le:CertificatesPerFQDNSet:" + set, ModeSpend},
		}, failed)},
	}
	for _, tt := range tests {
		txns, err := c.OrderTransactions(Order{Directory: leDir, Account: "acct-1", SANs: sans, Kind: tt.kind})
		if err != nil {
			t.Fatalf("kind %d: %v", tt.kind, err)
		}
		if got := summarize(txns); !slices.Equal(got, tt.want) {
			t.Errorf("kind %d:\n got %v\nwant %v", tt.kind, got, tt.want)
		}
	}
}

// A wildcard and its base name share one authorization host, so the order
// checks that host's failed-authorization bucket once: a batch naming a
// bucket twice is refused by the store, which held such a request for ever.
func TestOrderTransactionsWildcardAndBaseName(t *testing.T) {
	c := testCatalogue(t)
	txns, err := c.OrderTransactions(Order{Directory: leDir, Account: "acct-1", SANs: []string{"example.com", "*.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	for _, tx := range txns {
		keys[tx.Key()]++
	}
	for k, n := range keys {
		if n != 1 {
			t.Errorf("bucket %s appears %d times in one order", k, n)
		}
	}
	if keys["le:FailedAuthorizationsPerDomainPerAccount:acct-1:example.com"] != 1 {
		t.Errorf("no failed-authorization check for example.com: %v", keys)
	}
	l := NewLimiter(LimiterConfig{Store: NewMemStore(), Catalogue: c})
	if _, err := l.Spend(context.Background(), txns); err != nil {
		t.Fatalf("spending the order's buckets: %v", err)
	}
}

func TestOrderTransactionsRejects(t *testing.T) {
	c := testCatalogue(t)
	tests := []struct {
		name string
		o    Order
	}{
		{"unknown CA", Order{Directory: "https://other/dir", Account: "a", SANs: []string{"example.com"}}},
		{"no account", Order{Directory: leDir, SANs: []string{"example.com"}}},
		{"no SANs", Order{Directory: leDir, Account: "a"}},
		{"public suffix", Order{Directory: leDir, Account: "a", SANs: []string{"co.uk"}}},
		{"bad label", Order{Directory: leDir, Account: "a", SANs: []string{"-x.example.com"}}},
		{"injection", Order{Directory: leDir, Account: "a", SANs: []string{"x'; DROP TABLE t;--.com"}}},
		{"single label", Order{Directory: leDir, Account: "a", SANs: []string{"localhost"}}},
	}
	for _, tt := range tests {
		if _, err := c.OrderTransactions(tt.o); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", tt.name, err)
		}
	}
}

// The SANs of an order are canonicalised by package names: the set's hash
// is that of the canonical names. What names refuses makes the order
// invalid: an absolute name, and any IP address, with names' reason.
func TestOrderTransactionsCanonicalSANs(t *testing.T) {
	c := testCatalogue(t)
	txns, err := c.OrderTransactions(Order{Directory: leDir, Account: "a", SANs: []string{"Example.COM", "*.example.com", "bücher.example"}})
	if err != nil {
		t.Fatal(err)
	}
	set := "le:CertificatesPerFQDNSet:" + FQDNSetHash([]string{"example.com", "*.example.com", "xn--bcher-kva.example"})
	if !slices.ContainsFunc(txns, func(t Transaction) bool { return t.Key() == set }) {
		t.Errorf("no bucket %s in %v", set, summarize(txns))
	}
	for _, san := range []string{"2001:db8::1", "::ffff:192.0.2.1", "192.0.2.1"} {
		_, err := c.OrderTransactions(Order{Directory: leDir, Account: "a", SANs: []string{"example.com", san}})
		if !errors.Is(err, ErrInvalidRequest) || !errors.Is(err, names.ErrIPAddress) || !strings.Contains(err.Error(), "IP address identifiers are not supported: ") {
			t.Errorf("IP SAN %q: err = %v; want ErrInvalidRequest with names' reason", san, err)
		}
	}
	if _, err := c.OrderTransactions(Order{Directory: leDir, Account: "a", SANs: []string{"Example.COM."}}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("absolute name: err = %v; want ErrInvalidRequest", err)
	}
}

func TestRegistrationTransactions(t *testing.T) {
	c := testCatalogue(t)
	tests := []struct {
		name   string
		egress string
		want   []string // keys
	}{
		{"IPv4: per address", "192.0.2.7", []string{"le:NewRegistrationsPerIPAddress:192.0.2.7"}},
		{"IPv4-mapped counts as IPv4", "::ffff:192.0.2.7", []string{"le:NewRegistrationsPerIPAddress:192.0.2.7"}},
		{"IPv6: per address and per /48", "2001:db8:1:2::7", []string{
			"le:NewRegistrationsPerIPAddress:2001:db8:1:2::7", "le:NewRegistrationsPerIPv6Range:2001:db8:1::/48"}},
		{"IPv6 zone dropped", "fe80::1%eth0", []string{
			"le:NewRegistrationsPerIPAddress:fe80::1", "le:NewRegistrationsPerIPv6Range:fe80::/48"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			txns, err := c.RegistrationTransactions(leDir, netip.MustParseAddr(tt.egress))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, x := range txns {
				if x.Cost != 1 || x.Mode != ModeSpend {
					t.Errorf("%s: cost %d mode %s, want a spend of 1", x.Key(), x.Cost, x.Mode)
				}
				if l, ok := c.Default(leDir, x.Name); !ok || l.Period != 3*time.Hour {
					t.Errorf("%s: limit %v, want Let's Encrypt's per 3 h", x.Key(), l)
				}
				got = append(got, x.Key())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("keys %q, want %q", got, tt.want)
			}
		})
	}
	for _, bad := range []netip.Addr{{}, netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if _, err := c.RegistrationTransactions(leDir, bad); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("egress %q: err %v, want ErrInvalidRequest", bad, err)
		}
	}
	if _, err := c.RegistrationTransactions("https://unknown.example/dir", netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("unknown CA: err %v, want ErrInvalidRequest", err)
	}
}

// TestRegistrationsLimitedPerIP: the eleventh registration from one address
// within 3 h is denied, and an IPv6 /48 is shared by its addresses.
func TestRegistrationsLimitedPerIP(t *testing.T) {
	c := testCatalogue(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := NewLimiter(LimiterConfig{Store: NewMemStore(), Catalogue: c, Clock: clk})
	reg := func(addr string) Result {
		txns, err := c.RegistrationTransactions(leDir, netip.MustParseAddr(addr))
		if err != nil {
			t.Fatal(err)
		}
		r, err := l.Spend(context.Background(), txns)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for i := range 10 {
		if r := reg("192.0.2.7"); !r.Allowed {
			t.Fatalf("registration %d from one IPv4 address denied: %+v", i+1, r)
		}
	}
	if r := reg("192.0.2.7"); r.Allowed || r.Limiting.Name != NewRegistrationsPerIPAddress || r.RetryIn != 18*time.Minute {
		t.Fatalf("11th registration = %+v, want denied by NewRegistrationsPerIPAddress for 18m (3h/10)", r)
	}
	if r := reg("192.0.2.8"); !r.Allowed {
		t.Fatalf("another address denied: %+v", r)
	}
	// 500 per /48: 50 addresses of one /48, 10 each, then the range is full.
	for a := range 50 {
		for range 10 {
			if r := reg(fmt.Sprintf("2001:db8:1:%x::1", a)); !r.Allowed {
				t.Fatalf("address %d of the /48 denied early: %+v", a, r)
			}
		}
	}
	if r := reg("2001:db8:1:ffff::1"); r.Allowed || r.Limiting.Name != NewRegistrationsPerIPv6Range {
		t.Fatalf("501st registration from one /48 = %+v, want denied by NewRegistrationsPerIPv6Range", r)
	}
	if r := reg("2001:db8:2::1"); !r.Allowed {
		t.Fatalf("another /48 denied: %+v", r)
	}
}
