package scheduler

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/certfleet/certfleet/events"
)

// An ARI id read back into a certificate names the same certificate.
func TestCertOfARIIDRoundTrip(t *testing.T) {
	for _, serial := range []*big.Int{big.NewInt(1), big.NewInt(0x7f), big.NewInt(0x80), big.NewInt(0xff00),
		new(big.Int).Lsh(big.NewInt(1), 159), new(big.Int).SetBytes([]byte{0x03, 0xa1, 0xff, 0x00, 0x12})} {
		orig := &x509.Certificate{AuthorityKeyId: []byte{0x69, 0x88, 0x5b, 0x6b, 0x87, 0x46, 0x40, 0x41}, SerialNumber: serial}
		id := events.ARICertID(orig)
		got, err := certOfARIID(id)
		if err != nil {
			t.Fatalf("serial %x: %v", serial, err)
		}
		if got.SerialNumber.Cmp(serial) != 0 || string(got.AuthorityKeyId) != string(orig.AuthorityKeyId) || events.ARICertID(got) != id {
			t.Fatalf("serial %x: id %s read back as %x / %x", serial, id, got.AuthorityKeyId, got.SerialNumber)
		}
	}
	for _, bad := range []string{"", "abc", "aYhba4dGQEE", ".AQ", "aYhba4dGQEE.", "aYhba4dGQEE.gA", "aYhba4dGQEE.AAE", "a*b.AQ"} {
		if _, err := certOfARIID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A CA with no directory URL has no ARI to ask: nothing goes on the wire.
func TestFetchWithoutDirectory(t *testing.T) {
	c := &ARIClient{Directories: map[string]string{"pebble": "https://127.0.0.1:14000/dir"}}
	for _, ca := range []string{"letsencrypt", "http://acme.test/dir"} {
		if _, err := c.Fetch(t.Context(), ca, "aYhba4dGQEE.AQ"); !errors.Is(err, ErrNoARI) {
			t.Errorf("CA %q: err = %v, want ErrNoARI", ca, err)
		}
	}
	if _, err := c.Fetch(t.Context(), "pebble", "not-an-id"); err == nil || errors.Is(err, ErrNoARI) {
		t.Errorf("bad id: err = %v", err)
	}
}

// The ARI clients (and acmez's directory cache behind them) are keyed by
// configured directories only: fetches for any number of CAs named some
// other way add none, and send nothing.
func TestARIClientsBounded(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	defer srv.Close()
	c := &ARIClient{HTTP: srv.Client(), Directories: map[string]string{"a": "https://a.test/dir", "b": "https://b.test/dir"}}
	for i := range 1000 {
		ca := fmt.Sprintf("%s/dir%d", srv.URL, i)
		if _, err := c.Fetch(t.Context(), ca, "aYhba4dGQEE.AQ"); !errors.Is(err, ErrNoARI) {
			t.Fatalf("CA %q: err = %v, want ErrNoARI", ca, err)
		}
	}
	for _, ca := range []string{"a", "b", "https://a.test/dir", "a", "https://b.test/dir"} {
		if _, err := c.acmeClient(ca); err != nil {
			t.Fatalf("configured CA %q: %v", ca, err)
		}
	}
	c.mu.Lock()
	n := len(c.clients)
	c.mu.Unlock()
	if n != 2 || hits.Load() != 0 {
		t.Fatalf("%d clients kept (want 2, one per configured directory), %d requests sent (want 0)", n, hits.Load())
	}
}
