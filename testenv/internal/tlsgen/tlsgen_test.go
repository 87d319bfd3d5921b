package tlsgen

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestLeafVerifiesAgainstItsCA(t *testing.T) {
	now := time.Now()
	s, err := New("test CA", []string{"localhost"}, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(s.CADER)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(s.LeafDER)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: now}); err != nil {
			t.Errorf("leaf for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com", CurrentTime: now}); err == nil {
		t.Error("leaf verified for a name it does not carry")
	}
}
