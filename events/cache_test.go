package events

import (
	"fmt"
	"testing"

	"golang.org/x/net/publicsuffix"
)

// isICANNSuffix is the public suffix list's answer, uncached.
func isICANNSuffix(name string) bool {
	suffix, icann := publicsuffix.PublicSuffix(name)
	return icann && suffix == name
}

// The table of names known not to be ICANN public suffixes answers as the
// list does, asked once or again, full or not: a public suffix is never
// taken for a name, whatever shares its slot.
func TestSuffixTableAgreesWithList(t *testing.T) {
	in := append(fastCheckInputs(), "co.uk", "example.co.uk", "github.io", "foo.github.io", "ck", "a.ck", "www.ck",
		"b.a.ck", "pvt.k12.ma.us", "x.pvt.k12.ma.us", "kawasaki.jp", "x.kawasaki.jp", "city.kawasaki.jp", "com", "uk")
	check := func(pass string) {
		for _, n := range in {
			if got, want := notICANNSuffix(n), !isICANNSuffix(n); got != want {
				t.Errorf("%s: notICANNSuffix(%q) = %v, the list says %v", pass, n, got, want)
			}
		}
	}
	check("first")
	check("again")
	// Fill every slot many times over; the public suffixes are still refused
	// and the names still accepted.
	for i := range 8 * suffixSlots {
		if n := fmt.Sprintf("n%d.example.com", i); !notICANNSuffix(n) {
			t.Fatalf("notICANNSuffix(%q) = false", n)
		}
	}
	check("after filling")
	suffixes := 0
	for _, n := range in {
		if isICANNSuffix(n) {
			suffixes++
		}
	}
	if suffixes < 5 {
		t.Fatalf("only %d ICANN public suffixes among the inputs: the test checks too little", suffixes)
	}
}
