package events

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

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

// A chain whose leaf facts come from the cache is held to the payload's
// fields exactly as a freshly parsed one: the cache spares the parsing, not
// a comparison.
func TestChainCacheKeepsEveryCheck(t *testing.T) {
	base := *samplePayloads(t)[1].(*CertObtained)
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, ok := chainCache.get(base.ChainPEM); !ok {
		t.Fatal("a chain Validate accepted is not in the cache: the rest of the test would check the parse, not the cache")
	}
	fresh, err := parseChainUncached(base.ChainPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cached, _ := chainCache.get(base.ChainPEM); cached != fresh {
		t.Fatalf("cached facts %+v, parsing gives %+v", cached, fresh)
	}
	mutations := []struct {
		name   string
		mutate func(p *CertObtained)
		err    error
		field  string
	}{
		{"serial", func(p *CertObtained) { p.Serial = "5" + p.Serial[1:] }, ErrInvalidField, "chain_pem"},
		{"not_before", func(p *CertObtained) { p.NotBefore = p.NotBefore.Add(time.Second) }, ErrInvalidField, "chain_pem"},
		{"not_after", func(p *CertObtained) { p.NotAfter = p.NotAfter.Add(-time.Second) }, ErrInvalidField, "chain_pem"},
		{"one SAN fewer", func(p *CertObtained) { p.SANs = p.SANs[:1] }, ErrInvalidField, "chain_pem"},
		{"another SAN", func(p *CertObtained) { p.SANs = []string{"example.com", "mail.example.com"} }, ErrInvalidField, "chain_pem"},
		{"data after the chain", func(p *CertObtained) { p.ChainPEM += "x" }, ErrInvalidField, "chain_pem"},
		{"chain cut short", func(p *CertObtained) { p.ChainPEM = p.ChainPEM[:len(p.ChainPEM)/2] }, ErrInvalidField, "chain_pem"},
		{"one byte of base64 changed", func(p *CertObtained) {
			i := strings.Index(p.ChainPEM, "\n") + 5
			p.ChainPEM = p.ChainPEM[:i] + "!" + p.ChainPEM[i+1:]
		}, ErrInvalidField, "chain_pem"},
		{"private key appended", func(p *CertObtained) {
			p.ChainPEM += "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
		}, ErrPrivateKey, "chain_pem"},
		{"no chain", func(p *CertObtained) { p.ChainPEM = "" }, ErrMissingField, "chain_pem"},
	}
	for round := range 2 { // the second round meets whatever the first cached
		for _, m := range mutations {
			p := base
			p.SANs = append([]string(nil), base.SANs...)
			m.mutate(&p)
			err := p.Validate()
			var fe *FieldError
			if !errors.Is(err, m.err) || !errors.As(err, &fe) || fe.Field != m.field {
				t.Errorf("round %d, %s: Validate = %v, want %v on %s", round, m.name, err, m.err, m.field)
			}
		}
	}
	// Chains that share slots each keep their own facts.
	others := generatedPayloads(t, 3*chainSlots)
	for round := range 2 {
		for i, p := range others {
			if err := p.Validate(); err != nil {
				t.Fatalf("round %d, generated chain %d: %v", round, i, err)
			}
			if f, err := parseChain(p.ChainPEM); err != nil || f.serial != p.Serial {
				t.Fatalf("round %d, generated chain %d: facts %+v (%v), want serial %s", round, i, f, err, p.Serial)
			}
		}
	}
	// Concurrent validations of the same and of other chains agree.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				p := base
				if (g+i)%3 == 0 {
					p.ChainPEM += "x"
					if err := p.Validate(); err == nil {
						t.Error("a chain with data after it passed")
						return
					}
					continue
				}
				if err := p.Validate(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// generatedPayloads returns n valid cert.obtained payloads, each with a
// chain of its own (a self-signed leaf, its serial and SANs by index).
func generatedPayloads(t *testing.T, n int) []*CertObtained {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	out := make([]*CertObtained, n)
	for i := range out {
		sans := []string{fmt.Sprintf("h%d.example.com", i)}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(1000 + i)), Subject: pkix.Name{CommonName: "gen"}, DNSNames: sans, NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour), AuthorityKeyId: []byte{1, 2, 3, 4}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = &CertObtained{RequestID: fmt.Sprintf("req-%d", i), SANs: sans, Tenant: "tenant-a", CA: "letsencrypt",
			Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
			ChainPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			ARICertID: ARICertID(leaf), Issuer: leaf.Issuer.String(), Attempts: 1}
	}
	return out
}

// parseChainUncached is parseChain on a cache of its own.
func parseChainUncached(chain string) (leafFacts, error) {
	saved := chainCache
	chainCache = newFactsCache()
	defer func() { chainCache = saved }()
	return parseChain(chain)
}
