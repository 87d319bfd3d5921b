package ratelimit

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certfleet/certfleet/names"
)

func validOverride() Override {
	return Override{Name: CertificatesPerDomain, Key: "example.com", Limit: Limit{500, 7 * 24 * time.Hour, 500},
		ValidFrom: t0, Comment: "customer ticket 42", CreatedBy: "ops@example.com"}
}

func TestValidateOverride(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Override)
		field string // "" means valid
	}{
		{"valid", func(*Override) {}, ""},
		{"wildcard", func(o *Override) { o.Key = "*.example.com" }, ""},
		{"account id", func(o *Override) { o.Name, o.Key = NewOrdersPerAccount, "https://acme.example/acct/123" }, ""},
		{"ip prefix (IP identifiers are not supported)", func(o *Override) { o.Key = "2001:db8::/64" }, "key"},
		{"ip address (IP identifiers are not supported)", func(o *Override) { o.Key = "192.0.2.1" }, "key"},
		{"unknown name", func(o *Override) { o.Name = "CertsPerDomain" }, "name"},
		{"star", func(o *Override) { o.Key = "*" }, "key"},
		{"tld wildcard", func(o *Override) { o.Key = "*.com" }, "key"},
		{"public suffix wildcard", func(o *Override) { o.Key = "*.co.uk" }, "key"},
		{"private public suffix wildcard", func(o *Override) { o.Key = "*.github.io" }, "key"},
		{"public suffix exact", func(o *Override) { o.Key = "co.uk" }, "key"},
		{"inner wildcard", func(o *Override) { o.Key = "a.*.example.com" }, "key"},
		{"upper case domain", func(o *Override) { o.Key = "Example.com" }, "key"},
		{"sql", func(o *Override) { o.Key = "x'; DROP TABLE ratelimit_overrides; --" }, "key"},
		{"empty key", func(o *Override) { o.Key = "" }, "key"},
		{"long key", func(o *Override) { o.Key = strings.Repeat("a", 300) }, "key"},
		{"zero count", func(o *Override) { o.Limit.Count = 0 }, "count"},
		{"absurd count", func(o *Override) { o.Limit.Count = 1 << 40 }, "count"},
		{"negative burst", func(o *Override) { o.Limit.Burst = -5 }, "burst"},
		{"tiny period", func(o *Override) { o.Limit.Period = time.Millisecond }, "period"},
		{"no valid_from", func(o *Override) { o.ValidFrom = time.Time{} }, "valid_from"},
		{"inverted range", func(o *Override) { o.ValidUntil = t0.Add(-time.Hour) }, "valid_until"},
		{"empty range", func(o *Override) { o.ValidUntil = t0 }, "valid_until"},
		{"control char comment", func(o *Override) { o.Comment = "hi\x1b[31m" }, "comment"},
		{"bidi override comment", func(o *Override) { o.Comment = "abc\u202edef" }, "comment"},
		{"invalid utf8 comment", func(o *Override) { o.Comment = "\xff" }, "comment"},
		{"no creator", func(o *Override) { o.CreatedBy = "" }, "created_by"},
		{"creator with space", func(o *Override) { o.CreatedBy = "bob smith" }, "created_by"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOverride()
			tt.edit(&o)
			err := ValidateOverride(o)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("ValidateOverride = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("ValidateOverride = %v, want a FieldError for %q", err, tt.field)
			}
		})
	}
}

func FuzzValidateOverrideKey(f *testing.F) {
	for _, s := range []string{"*.example.com", "*", "*.com", "example.com", "acct-1", "https://a/acct/1", "10.0.0.0/8", "*.a.b.c.example.co.uk", "\x00", "a..b", "*.*.example.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if ValidateOverrideKey(k) != nil {
			return
		}
		// Whatever is accepted is short, printable ASCII, and a wildcard
		// never covers a public suffix or more.
		if len(k) > maxKeyLen {
			t.Fatalf("accepted %d-byte key", len(k))
		}
		for i := 0; i < len(k); i++ {
			if k[i] < 0x21 || k[i] > 0x7e || strings.IndexByte("'\"`;\\ ", k[i]) >= 0 {
				t.Fatalf("accepted key %q with byte %q", k, k[i])
			}
		}
		if rest, ok := strings.CutPrefix(k, "*."); ok {
			if _, err := names.RegisteredDomain(rest); strings.Contains(rest, "*") || err != nil || names.Validate(rest) != nil {
				t.Fatalf("accepted bad wildcard %q", k)
			}
		} else if strings.Contains(k, "*") {
			t.Fatalf("accepted inner wildcard %q", k)
		}
	})
}

func TestOverrideCandidatesAndPick(t *testing.T) {
	txn := Transaction{Name: FailedAuthorizationsPerDomainPerAccount, Value: "acct-1:a.b.example.com", Account: "acct-1", Domain: "a.b.example.com"}
	want := []string{"acct-1:a.b.example.com", "acct-1", "a.b.example.com", "*.a.b.example.com", "*.b.example.com", "*.example.com"}
	if got := overrideCandidates(txn); !slices.Equal(got, want) {
		t.Fatalf("candidates = %v\nwant %v", got, want)
	}
	wide := &Override{ID: "1", Key: "*.example.com", ValidFrom: t0}
	narrow := &Override{ID: "2", Key: "*.b.example.com", ValidFrom: t0}
	acct := &Override{ID: "3", Key: "acct-1", ValidFrom: t0}
	later := &Override{ID: "4", Key: "*.b.example.com", ValidFrom: t0.Add(time.Hour)}
	cands := overrideCandidates(txn)
	tests := []struct {
		rows []*Override
		want *Override
	}{
		{nil, nil},
		{[]*Override{wide}, wide},
		{[]*Override{wide, narrow}, narrow},
		{[]*Override{narrow, wide, acct}, acct},
		{[]*Override{narrow, later}, later},
	}
	for i, tt := range tests {
		if got := pickOverride(cands, tt.rows); got != tt.want {
			t.Errorf("case %d: picked %+v, want %+v", i, got, tt.want)
		}
	}
}

// An IP address or prefix is no bucket's key: IP address identifiers are
// not supported, and the refusal says so.
func TestValidateOverrideKeyRefusesIPAddresses(t *testing.T) {
	for _, k := range []string{"192.0.2.1", "2001:db8::1", "2001:db8::/64", "10.0.0.0/8"} {
		err := ValidateOverrideKey(k)
		if !errors.Is(err, names.ErrIPAddress) || !strings.Contains(err.Error(), "IP address identifiers are not supported: ") {
			t.Errorf("ValidateOverrideKey(%q) = %v; want names' refusal of IP identifiers", k, err)
		}
	}
}
