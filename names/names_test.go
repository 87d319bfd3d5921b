package names

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		in   string
		want string
		err  error
	}{
		{"example.com", "example.com", nil},
		{"Example.COM", "example.com", nil},
		{"*.example.com", "*.example.com", nil},
		{"*.EXAMPLE.com", "*.example.com", nil},
		{"bücher.example", "xn--bcher-kva.example", nil},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", nil},
		{"ＥＸＡＭＰＬＥ.com", "example.com", nil}, // full-width maps for lookup
		{"a-b.example.co.uk", "a-b.example.co.uk", nil},
		{"foo.github.io", "foo.github.io", nil},
		{"github.io", "github.io", nil}, // private suffix: its owner may hold it
		{long63 + ".example.com", long63 + ".example.com", nil},

		{"", "", ErrEmpty},
		{"localhost", "", ErrSingleLabel},
		{"com", "", ErrSingleLabel},
		{"co.uk", "", ErrPublicSuffix},
		{"*.co.uk", "", ErrPublicSuffix},
		{"*.com", "", ErrPublicSuffix},
		{"example.com.", "", ErrTrailingDot},
		{"a.example.com..", "", ErrEmptyLabel},
		{"host.internal", "", ErrSpecialUse},
		{"a..example.com", "", ErrEmptyLabel},
		{".example.com", "", ErrEmptyLabel},
		{"*example.com", "", ErrWildcard},
		{"a.*.example.com", "", ErrWildcard},
		{"*.*.example.com", "", ErrWildcard},
		{"f*o.example.com", "", ErrWildcard},
		{"*", "", ErrWildcard},
		{"1.2.3.4", "", ErrIPAddress},
		{"[::1]", "", ErrIPAddress},
		{"2001:db8::1", "", ErrIPAddress},
		{"1.2.3.04", "", ErrNumericTLD},
		{"example.123", "", ErrNumericTLD},
		{"-a.example.com", "", ErrIDNA},
		{"a-.example.com", "", ErrIDNA},
		{"ab--c.example.com", "", ErrIDNA},
		{"xn--zz.example.com", "", ErrIDNA},
		{"under_score.example.com", "", ErrIDNA},
		{"sp ace.example.com", "", ErrControl},
		{"tab\t.example.com", "", ErrControl},
		{"nul\x00.example.com", "", ErrControl},
		{"bidi\u202e.example.com", "", ErrIDNA},
		{"bad\xff.example.com", "", ErrInvalidUTF8},
		{"repl\ufffd.example.com", "", ErrControl},
		{strings.Repeat("a", 64) + ".example.com", "", ErrLabelTooLong},
		{strings.Repeat(long63+".", 4) + "com", "", ErrTooLong},
		{strings.Repeat("a", 2000), "", ErrTooLong},
	}
	for _, tt := range tests {
		got, err := lab.Normalize(tt.in)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Normalize(%q) = %q, %v; want error %v", tt.in, got, err, tt.err)
			}
			var ne *NameError
			if !errors.As(err, &ne) || ne.Name != tt.in {
				t.Errorf("Normalize(%q): error %v is not a *NameError naming the input", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestValidateRequiresCanonical(t *testing.T) {
	if err := Validate("example.com"); err != nil {
		t.Fatalf("Validate(canonical) = %v", err)
	}
	for _, in := range []string{"Example.com", "bücher.example"} {
		err := lab.Validate(in)
		if !errors.Is(err, ErrNotCanonical) {
			t.Errorf("Validate(%q) = %v, want ErrNotCanonical", in, err)
		}
	}
}

func TestValidateList(t *testing.T) {
	tests := []struct {
		name  string
		list  []string
		err   error
		index int
	}{
		{"ok", []string{"a.example.com", "*.example.com"}, nil, 0},
		{"empty", nil, ErrNoNames, -1},
		{"too many", []string{"a.example.com", "b.example.com", "c.example.com"}, ErrTooManyNames, -1},
		{"duplicate", []string{"a.example.com", "a.example.com"}, ErrDuplicate, 1},
		{"bad second", []string{"a.example.com", "1.2.3.4"}, ErrIPAddress, 1},
	}
	for _, tt := range tests {
		err := ValidateList(tt.list, 2)
		if tt.err == nil {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		var ne *NameError
		if !errors.Is(err, tt.err) || !errors.As(err, &ne) || ne.Index != tt.index {
			t.Errorf("%s: got %v, want %v at index %d", tt.name, err, tt.err, tt.index)
		}
	}
}

func TestErrorQuotesControlCharacters(t *testing.T) {
	_, err := Normalize("a\nb.example.com")
	if err == nil || strings.ContainsAny(err.Error(), "\n") {
		t.Fatalf("error %q must not carry a raw newline", err)
	}
}

// FuzzNormalize checks the invariants every caller relies on: output is
// canonical (idempotent), short enough, and free of anything outside
// letters, digits, hyphen, dot and a leading "*."; the lab policy accepts
// everything the strict one does, unchanged.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"example.com", "*.Example.COM", "bücher.example", "1.2.3.4", "\xff\xfe", "a\x00b.com",
		strings.Repeat("a.", 200) + "com", "xn--.com", "*.*.com", "ǅ.example", "\u200d.example.com", "a\u0600b.example",
		"a.example.", "*.com", "*.test", "printer.local", "x.onion", "a.home.arpa", "host.corp", "www.ck", "xn--ls8h.example",
		"xn--ab-m1t.example", "xn--a-0hc.test", "col·lega.example", "a·b.example", "faß.example", "xn--kja.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		strict, strictErr := Normalize(in) // the process policy: strict here
		out, err := lab.Normalize(in)
		if strictErr == nil && (err != nil || out != strict) {
			t.Fatalf("the lab policy refuses or changes what the strict one accepts: %q -> %q, %v", in, out, err)
		}
		if err != nil {
			return
		}
		if len(out) > MaxNameLength {
			t.Fatalf("Normalize(%q) = %q: too long", in, out)
		}
		again, err := lab.Normalize(out)
		if err != nil || again != out {
			t.Fatalf("Normalize not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
		if err := lab.Validate(out); err != nil {
			t.Fatalf("Validate(Normalize(%q)) = %v", in, err)
		}
		rest := strings.TrimPrefix(out, "*.")
		for i := 0; i < len(rest); i++ {
			c := rest[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				t.Fatalf("Normalize(%q) = %q: byte %q", in, out, c)
			}
		}
	})
}

// IP address identifiers are refused in every form, with a reason that says
// so rather than a label error.
func TestIPAddressesAreRefusedWithAReason(t *testing.T) {
	for _, in := range []string{"192.0.2.1", "[2001:db8::1]", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "192.0.2.0/24", "2001:db8::/64"} {
		_, err := Normalize(in)
		if !errors.Is(err, ErrIPAddress) {
			t.Errorf("Normalize(%q) = %v; want ErrIPAddress", in, err)
			continue
		}
		if !strings.Contains(err.Error(), "IP address identifiers are not supported: ") {
			t.Errorf("Normalize(%q): %q does not say IP identifiers are unsupported", in, err)
		}
	}
}

func TestNormalizeSet(t *testing.T) {
	got, err := lab.NormalizeSet([]string{"WWW.Example.COM", "example.com", "www.example.com", "bücher.example"}, 3)
	if want := []string{"example.com", "www.example.com", "xn--bcher-kva.example"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("NormalizeSet = %q, %v; want %q", got, err, want)
	}
	tests := []struct {
		name  string
		list  []string
		err   error
		index int
	}{
		{"empty", nil, ErrNoNames, -1},
		{"too many distinct", []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}, ErrTooManyNames, -1},
		{"IP address", []string{"a.example.com", "192.0.2.1"}, ErrIPAddress, 1},
		{"absolute name", []string{"example.com."}, ErrTrailingDot, 0},
	}
	for _, tt := range tests {
		_, err := NormalizeSet(tt.list, 3)
		var ne *NameError
		if !errors.Is(err, tt.err) || !errors.As(err, &ne) || ne.Index != tt.index {
			t.Errorf("%s: got %v, want %v at index %d", tt.name, err, tt.err, tt.index)
		}
	}
}

func TestRegisteredDomain(t *testing.T) {
	for in, want := range map[string]string{
		"www.example.com":                  "example.com",
		"*.www.Example.COM":                "example.com",
		"a.b.example.co.uk":                "example.co.uk",
		"foo.github.io":                    "foo.github.io",
		"_acme-challenge.www.example.com.": "example.com",
		"x.certfleet.test":                 "certfleet.test",
	} {
		if got, err := RegisteredDomain(in); err != nil || got != want {
			t.Errorf("RegisteredDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"co.uk", "github.io", "com", ""} {
		if got, err := RegisteredDomain(in); !errors.Is(err, ErrPublicSuffix) {
			t.Errorf("RegisteredDomain(%q) = %q, %v; want ErrPublicSuffix", in, got, err)
		}
	}
}
