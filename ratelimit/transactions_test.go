package ratelimit

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

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
