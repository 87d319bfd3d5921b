package names

import (
	"errors"
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
		{"host.internal", "host.internal", nil},

		{"", "", ErrEmpty},
		{"localhost", "", ErrSingleLabel},
		{"com", "", ErrSingleLabel},
		{"co.uk", "", ErrPublicSuffix},
		{"*.co.uk", "", ErrPublicSuffix},
		{"*.com", "", ErrSingleLabel},
		{"example.com.", "", ErrEmptyLabel},
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
		got, err := Normalize(tt.in)
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
		err := Validate(in)
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
		{"empty", nil, ErrEmpty, -1},
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
// letters, digits, hyphen, dot and a leading "*.".
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"example.com", "*.Example.COM", "bücher.example", "1.2.3.4", "\xff\xfe", "a\x00b.com",
		strings.Repeat("a.", 200) + "com", "xn--.com", "*.*.com", "ǅ.example", "\u200d.example.com", "a\u0600b.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := Normalize(in)
		if err != nil {
			return
		}
		if len(out) > MaxNameLength {
			t.Fatalf("Normalize(%q) = %q: too long", in, out)
		}
		again, err := Normalize(out)
		if err != nil || again != out {
			t.Fatalf("Normalize not idempotent: %q -> %q -> %q, %v", in, out, again, err)
		}
		if err := Validate(out); err != nil {
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
