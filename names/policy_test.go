package names

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// lab is the policy of the lab CA tests run against: Pebble issues for
// .example and .test names.
var lab = Policy{AllowedSpecialUse: []string{"example", "test"}}

// Every special-use TLD the strict policy refuses, with the RFC its reason
// cites, and the same names under a lab policy that lists it.
func TestSpecialUseTLDs(t *testing.T) {
	for tld, rfc := range map[string]string{
		"invalid":   "RFC 6761",
		"localhost": "RFC 6761",
		"test":      "RFC 6761",
		"example":   "RFC 6761",
		"local":     "RFC 6762",
		"onion":     "RFC 7686",
		"alt":       "RFC 9476",
		"internal":  "ICANN",
		"arpa":      "RFC 8375",
	} {
		for _, name := range []string{"host." + tld, "a.b." + tld, "*.host." + tld} {
			_, err := Strict.Normalize(name)
			if !errors.Is(err, ErrSpecialUse) || !strings.Contains(err.Error(), rfc) || !strings.Contains(err.Error(), "."+tld+" is reserved") {
				t.Errorf("Strict.Normalize(%q) = %v; want ErrSpecialUse citing %s", name, err, rfc)
			}
			if !strings.Contains(err.Error(), "allow-special-names") {
				t.Errorf("Strict.Normalize(%q) = %v; want the flag that allows it named", name, err)
			}
			allow := Policy{AllowedSpecialUse: []string{tld}}
			if got, err := allow.Normalize(name); err != nil || got != name {
				t.Errorf("allowing %s: Normalize(%q) = %q, %v", tld, name, got, err)
			}
		}
	}
	// home.arpa (RFC 8375) and the reverse zones are under arpa.
	for _, name := range []string{"printer.home.arpa", "1.0.0.10.in-addr.arpa", "x.ip6.arpa"} {
		if _, err := Strict.Normalize(name); !errors.Is(err, ErrSpecialUse) {
			t.Errorf("Strict.Normalize(%q) = %v; want ErrSpecialUse", name, err)
		}
	}
}

// A TLD is delegated when a rule of the ICANN section of the public suffix
// list covers it, which x/net/publicsuffix reports as icann: exact rules
// ("com", IDN ccTLDs) and TLDs listed only through a wildcard rule ("*.ck",
// whose exception "!www.ck" is a registrable name). Private-section suffixes
// are below delegated TLDs. Names under a TLD no ICANN rule covers are
// refused.
func TestDelegatedTLDs(t *testing.T) {
	for _, name := range []string{
		"example.com", "www.example.co.uk", "a.b.example.xn--p1ai", "www.ck", "a.foo.ck", "a.foo.bd",
		"foo.github.io", "github.io", "*.foo.github.io", "a.example.dev", "example.org",
	} {
		if got, err := Strict.Normalize(name); err != nil || got != name {
			t.Errorf("Strict.Normalize(%q) = %q, %v", name, got, err)
		}
	}
	for _, name := range []string{"host.corp", "host.lan", "host.home", "nas.zz", "a.certfleet", "host.mail"} {
		_, err := Strict.Normalize(name)
		if !errors.Is(err, ErrNotDelegated) || !strings.Contains(err.Error(), "ICANN section of the public suffix list") {
			t.Errorf("Strict.Normalize(%q) = %v; want ErrNotDelegated", name, err)
		}
	}
	if !delegated("ck") || !delegated("com") || delegated("test") || delegated("corp") {
		t.Error("delegated: wrong for ck, com, test or corp")
	}
}

// The reasons name the real problem.
func TestReasons(t *testing.T) {
	tests := []struct {
		p    Policy
		name string
		err  error
		want string
	}{
		{lab, "a.example.", ErrTrailingDot, `names: "a.example.": trailing dot: write a.example, not a.example.`},
		{lab, "*.Www.Example.", ErrTrailingDot, `trailing dot: write *.www.example, not *.Www.Example.`},
		{Strict, "com.", ErrTrailingDot, `trailing dot: certificate names are written without it`},
		{Strict, "*.com", ErrPublicSuffix, `wildcard directly under the public suffix com`},
		{Strict, "*.co.uk", ErrPublicSuffix, `wildcard directly under the public suffix co.uk`},
		{lab, "*.test", ErrSingleLabel, `wildcard directly under the top-level domain test`},
		{Strict, "co.uk", ErrPublicSuffix, `names are registered below co.uk`},
		{Strict, "printer.local", ErrSpecialUse, `.local is reserved for multicast DNS (RFC 6762)`},
		{lab, "ab--c.example", ErrIDNA, `hyphens in the third and fourth positions are reserved for A-labels`},
		{lab, "-a.example", ErrIDNA, `starts or ends with a hyphen`},
		{lab, "under_score.example", ErrIDNA, `character '_'`},
		{lab, "xn--zz.example", ErrIDNA, `"xn--zz" is not valid Punycode`},
		{lab, "xn--kja.example", ErrIDNA, `write xn--d-toa`}, // "ǅ" encoded unmapped
	}
	for _, tt := range tests {
		_, err := tt.p.Normalize(tt.name)
		if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Normalize(%q) = %v; want %v saying %q", tt.name, err, tt.err, tt.want)
		}
	}
	for in, want := range map[string]string{
		"Example.com":       `names: "Example.com": name is not in canonical form: upper case; write example.com`,
		"*.WWW.example.com": `upper case; write *.www.example.com`,
		"bücher.example":    `Unicode form; write the A-label form xn--bcher-kva.example`,
		"faß.example":       `Unicode form; write the A-label form xn--fa-hia.example`,
	} {
		if err := lab.Validate(in); !errors.Is(err, ErrNotCanonical) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%q) = %v; want %q", in, err, want)
		}
	}
	for _, err := range []error{Strict.ValidateList(nil, 3), func() error { _, err := Strict.NormalizeSet([]string{}, 3); return err }()} {
		if !errors.Is(err, ErrNoNames) || err.Error() != "names: no SANs: at least one is required" {
			t.Errorf("empty list: %v", err)
		}
	}
}

// UTS #46 non-transitional processing: the deviation characters stay, as
// IDNA2008 has them. Python's built-in "idna" codec (IDNA2003) maps faß to
// fass, a different name; certfleet certifies xn--fa-hia.
func TestNonTransitional(t *testing.T) {
	for in, want := range map[string]string{
		"faß.example":        "xn--fa-hia.example",
		"xn--fa-hia.example": "xn--fa-hia.example",
		"ς.example":          "xn--3xa.example",
		"FASS.example":       "fass.example",
		"Faß.EXAMPLE":        "xn--fa-hia.example",
	} {
		if got, err := lab.Normalize(in); err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// IDNA2008 on the decoded form of xn-- labels, and on U-labels: each class
// refused, whichever form it arrives in, and its valid neighbour accepted.
func TestIDNA2008(t *testing.T) {
	refused := []struct {
		class, ulabel, alabel, want string
	}{
		{"emoji (UTS #46 NV8)", "💩", "xn--ls8h", "U+1F4A9, which IDNA2008 disallows"},
		{"symbol (UTS #46 NV8)", "☕", "xn--53h", "U+2615, which IDNA2008 disallows"},
		{"old Hangul jamo", "ᄀ", "xn--ypd", "U+1100, which IDNA2008 disallows"},
		{"Arabic tatweel (exception)", "بـب", "xn--ngba5e", "U+0640, which IDNA2008 disallows"},
		{"combining mark for symbols", "a\u20d0", "xn--a-zrn", "U+20D0, which IDNA2008 disallows"},
		{"UTS #46 disallowed", "≠", "xn--1ch", "U+2260 is not allowed"},
		{"bidi override", "bidi\u202e", "xn--bidi-yd7a", "U+202E is not allowed"},
		{"Bidi rule", "aא", "xn--a-0hc", "Bidi rule (RFC 5893)"},
		{"Bidi rule: Arabic-Indic digits mixed", "ب٠۰", "xn--ngb6iyr", "Bidi rule (RFC 5893)"},
		{"zero width joiner, no virama", "a\u200db", "xn--ab-m1t", "CONTEXTJ"},
		{"zero width non-joiner, no virama", "a\u200cb", "xn--ab-j1t", "CONTEXTJ"},
		{"leading combining mark", "\u0301a", "xn--a-wbb", "begins with a combining mark"},
		{"middle dot not between l", "a·b", "xn--ab-0ea", "U+00B7 outside the context"},
		{"Greek keraia before Latin", "͵a", "xn--a-jib", "U+0375 outside the context"},
		{"Hebrew geresh first", "׳א", "xn--4db3e", "U+05F3 outside the context"},
		{"katakana middle dot alone", "a・b", "xn--ab-3n4a", "U+30FB outside the context"},
	}
	for _, c := range refused {
		for _, in := range []string{c.ulabel + ".example", c.alabel + ".example"} {
			_, err := lab.Normalize(in)
			if !errors.Is(err, ErrIDNA) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: Normalize(%q) = %v; want ErrIDNA saying %q", c.class, in, err, c.want)
			}
		}
	}
	accepted := []struct{ class, ulabel, alabel string }{
		{"Latin", "bücher", "xn--bcher-kva"},
		{"Greek", "αβ", "xn--mxac"},
		{"zero width joiner after virama", "क्\u200dष", "xn--11b2ezcw70k"},
		{"zero width non-joiner after virama", "क्\u200cष", "xn--11b2ezcs70k"},
		{"middle dot between l", "col·lega", "xn--collega-xma"},
		{"Greek keraia before Greek", "͵α", "xn--wva4j"},
		{"Hebrew geresh after Hebrew", "א׳", "xn--4db4e"},
		{"katakana middle dot with katakana", "ア・イ", "xn--ccke4x"},
		{"Arabic-Indic digit after Arabic", "ب٠", "xn--ngb6i"},
	}
	for _, c := range accepted {
		want := c.alabel + ".example"
		for _, in := range []string{c.ulabel + ".example", want} {
			if got, err := lab.Normalize(in); err != nil || got != want {
				t.Errorf("%s: Normalize(%q) = %q, %v; want %q", c.class, in, got, err, want)
			}
		}
	}
	// An A-label must be the canonical encoding of its mapped text.
	for _, in := range []string{"xn--kja.example", "xn--a-xbb.example", "xn--vuh.example"} {
		if _, err := lab.Normalize(in); !errors.Is(err, ErrIDNA) || !strings.Contains(err.Error(), "not canonical") {
			t.Errorf("Normalize(%q) = %v; want ErrIDNA naming the canonical label", in, err)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy(" .Test, example,test,,")
	if err != nil || !slices.Equal(p.AllowedSpecialUse, []string{"example", "test"}) || p.String() != "strict but for .example, .test" {
		t.Fatalf("ParsePolicy = %+v (%s), %v", p, p, err)
	}
	if p, err := ParsePolicy(""); err != nil || len(p.AllowedSpecialUse) != 0 || p.String() != "strict" {
		t.Fatalf("ParsePolicy(\"\") = %+v, %v; want Strict", p, err)
	}
	for in, want := range map[string]string{
		"com":        "it is delegated",
		"test,co.uk": "want one lower-case label",
		"a_b":        "want one lower-case label",
		"123":        "want one lower-case label",
		"xn--p1ai":   "want one lower-case label",
	} {
		if _, err := ParsePolicy(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePolicy(%q) = %v; want %q", in, err, want)
		}
	}
	for _, ok := range []string{"onion", "arpa", "corp", "local"} {
		if _, err := ParsePolicy(ok); err != nil {
			t.Errorf("ParsePolicy(%q) = %v", ok, err)
		}
	}
}

// The package-level functions follow the process policy, which is Strict
// until a binary sets it.
func TestProcessPolicy(t *testing.T) {
	defer func() { process.Store(nil) }()
	if p := ProcessPolicy(); len(p.AllowedSpecialUse) != 0 {
		t.Fatalf("default process policy %s; want strict", p)
	}
	if _, err := Normalize("a.test"); !errors.Is(err, ErrSpecialUse) {
		t.Fatalf("Normalize under the default policy: %v", err)
	}
	if err := SetProcessPolicy(Policy{AllowedSpecialUse: []string{"com"}}); err == nil {
		t.Fatal("SetProcessPolicy accepted a delegated TLD")
	}
	allowed := []string{"test"}
	if err := SetProcessPolicy(Policy{AllowedSpecialUse: allowed}); err != nil {
		t.Fatal(err)
	}
	allowed[0] = "example" // the process keeps its own copy
	if got, err := Normalize("A.test"); err != nil || got != "a.test" {
		t.Fatalf("Normalize under the lab policy = %q, %v", got, err)
	}
	if err := ValidateList([]string{"a.test", "b.example"}, 5); !errors.Is(err, ErrSpecialUse) {
		t.Fatalf("ValidateList: %v; want .example refused", err)
	}
}
