package events

import (
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/certfleet/certfleet/names"
)

// fastPatterns pairs every hand-written matcher with the pattern it stands
// for.
var fastPatterns = []struct {
	re    *regexp.Regexp
	match func(string) bool
}{
	{idPattern, matchID}, {namePattern, matchName}, {ariPattern, matchARI},
	{serialPattern, matchSerial}, {problemPattern, matchProblem}, {limitPattern, matchLimit},
}

// fastCheckInputs are edge cases of every fast path: lengths at and past
// each bound, each character class, and the names that need IDNA or the
// public suffix list.
func fastCheckInputs() []string {
	in := []string{
		"", "a", "A", "0", "00", "0a", "a0", "-", "a-", "-a", ".", "a.", ".a", "a.b", "a..b", "_a", "a_b", "a:b", "a@b",
		"a/b", "a+b=c", "a b", "a\x00b", "a\nb", "é", "aé", "4a3f9c", "4A3F", "abcdefg", "AQIDBA.AEo_nC4bDY5_altMPS4fCpuMxw",
		"a.b.c", ".b", "a.", "urn:ietf:params:acme:error:rateLimited", "urn:certfleet:error:x", "urn:certfleet:error:",
		"urn:certfleet:error:a-b", "urn:ietf:params:acme:error:" + strings.Repeat("a", 65), "CertificatesPerDomain",
		"1Limit", "Limit.per-x_y", "letsencrypt", "Letsencrypt", "lets encrypt", "le.staging-2",
		"example.com", "www.example.com", "*.example.com", "*.com", "com", "co.uk", "example.co.uk", "*.co.uk",
		"github.io", "foo.github.io", "*.github.io", "a.ck", "www.ck", "b.a.ck", "pvt.k12.ma.us", "x.pvt.k12.ma.us",
		"example.test", "a.example", "printer.local", "x.onion", "nas.corp", "h.home.arpa", "1.2.3.4", "1.2.3.a4", "a.123",
		"ab--c.example.com", "xn--fa-hia.de", "xn--ls8h.example.com", "a-.example.com", "-a.example.com", "a.-b.com",
		"Example.com", "example.com.", "*.*.example.com", "a*.example.com", "*", "*.", "*.a", "a.b-", "a.b1",
		strings.Repeat("a", 63) + ".com", strings.Repeat("a", 64) + ".com",
		strings.Repeat("a.", 125) + "com", strings.Repeat("a.", 126) + "com", "*." + strings.Repeat("a.", 124) + "co",
		"//certfleet/issuer-worker", "//certfleet/test", "/a/b", "a:b", "%zz", "//a%zz", "//[::1]/x", "https://h/x",
		"https://acme-staging-v02.api.letsencrypt.org/directory", "https://", "https:///x", "https://a@b/", "https://a:443/x",
		"https://a/x#f", "https://a/x?q", "http://a/x", "HTTPS://a/x", "https://a_b~c/-x", "https://a/" + strings.Repeat("x", 512),
	}
	for _, n := range []int{1, 63, 64, 127, 128, 129, 255, 256, 257} {
		in = append(in, strings.Repeat("a", n), "A"+strings.Repeat("0", n), strings.Repeat("a", n)+"."+strings.Repeat("b", 256),
			strings.Repeat("f", n), "urn:certfleet:error:"+strings.Repeat("Z", n))
	}
	return in
}

// checkFastPaths holds each fast path to its full check on s: a matcher
// answers exactly as its regexp; the other fast paths only accept what the
// full check accepts.
func checkFastPaths(t *testing.T, s string) {
	t.Helper()
	for _, fp := range fastPatterns {
		if got, want := fp.match(s), fp.re.MatchString(s); got != want {
			t.Errorf("matcher of %s on %q = %v, regexp says %v", fp.re, s, got, want)
		}
	}
	if plainText(s, 1024) {
		if err := checkTextFull(s, 1024); err != nil {
			t.Errorf("plainText accepts %q, checkText refuses it: %v", s, err)
		}
	}
	if isURIPlain(s) && s != "" {
		if _, err := url.Parse(s); err != nil {
			t.Errorf("isURIPlain accepts %q, url.Parse refuses it: %v", s, err)
		}
	}
	if plainHTTPSURL(s) {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" || !plainText(s, maxCAURLLen) {
			t.Errorf("plainHTTPSURL accepts %q, which checkCA's URL rules refuse (%v)", s, err)
		}
	}
	for _, p := range []names.Policy{names.Strict, {AllowedSpecialUse: []string{"example", "test"}}} {
		if canonicalFast(p, s) {
			if err := p.Validate(s); err != nil {
				t.Errorf("canonicalFast(%v) accepts %q, names refuses it: %v", p, s, err)
			}
		}
	}
}

func TestFastPathsAgreeWithFullChecks(t *testing.T) {
	for _, s := range fastCheckInputs() {
		checkFastPaths(t, s)
	}
	// The common names do take the fast path: the benchmarks measure it.
	for _, n := range []string{"example.com", "www.example.com", "*.example.com", "a-b.example.co.uk"} {
		if !canonicalFast(names.Strict, n) {
			t.Errorf("canonicalFast(strict) refuses %q", n)
		}
	}
	for _, n := range []string{"*.com", "co.uk", "*.co.uk", "a.ck", "example.test", "xn--fa-hia.de", "1.2.3.4", "Example.com"} {
		if canonicalFast(names.Strict, n) {
			t.Errorf("canonicalFast(strict) accepts %q", n)
		}
	}
}

func FuzzFastPaths(f *testing.F) {
	for _, s := range fastCheckInputs() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkFastPaths(t, s) })
}

// FuzzDirectDecode holds decodeDirect to the encoding/json path: whatever
// it takes, unmarshalSlow takes too, into an equal payload with the same
// fields present; and appendPayload writes what encoding/json writes.
func FuzzDirectDecode(f *testing.F) {
	for i, e := range sampleEvents(f) {
		m, err := Encode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), m.Value)
		for _, v := range contractVariants(m) {
			f.Add(uint8(i), v)
		}
		for _, v := range hostileValues() {
			f.Add(uint8(i), v)
		}
		f.Add(uint8(i), []byte(` { "tenant" : "t\u0041\n\"\\\/\b\f\r\t\u00e9\u2028" , "sans":[ "a" ,"b"], "attempt":-0,"priority":12,"retryable":false} `))
		f.Add(uint8(i), []byte(`{"sans":["\ud83d\ude00"],"attempt":01,"priority":1e2,"ten\u0061nt":"x","not_before":"2026-01-02T03:04:05.5+01:00"}`))
	}
	types := Types()
	f.Fuzz(func(t *testing.T, which uint8, value []byte) {
		if !utf8.Valid(value) {
			return // unmarshal refuses it before either path
		}
		typ := types[int(which)%len(types)]
		p := registry[typ]()
		present, ok := decodeDirect(p, value, string(value))
		if !ok {
			return
		}
		slow, slowPresent, err := unmarshalSlow(typ, value)
		if err != nil {
			t.Fatalf("decodeDirect took %s, encoding/json refuses it: %v", value, err)
		}
		if !reflect.DeepEqual(p, slow) || present != slowPresent {
			t.Fatalf("decodeDirect read %s as\n%+v (fields %b), encoding/json as\n%+v (fields %b)", value, p, present, slow, slowPresent)
		}
		direct, ok := appendPayload(nil, p)
		want, err := marshalJSON(p)
		if ok != (err == nil) || ok && string(direct) != string(want) {
			t.Fatalf("appendPayload wrote %s (%v), encoding/json %s (%v)", direct, ok, want, err)
		}
	})
}
