package testenv

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/certfleet/certfleet/testenv/internal/tlsgen"
)

// writeServingCerts creates, once per state directory, a throwaway CA and a
// certificate for localhost/127.0.0.1 that Pebble serves its ACME API with.
// Clients trust ca.pem (CERTFLEET_ACME_TLS_CA). Generating them here rather
// than copying Pebble's test certificates means `go install` is all Pebble
// needs.
func writeServingCerts(dir string) (caPath, certPath, keyPath string, err error) {
	servingCertsMu.Lock() // both Pebbles start in parallel and share them
	defer servingCertsMu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", "", fmt.Errorf("testenv: creating %s: %w", dir, err)
	}
	caPath, certPath, keyPath = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := os.Stat(keyPath); err == nil {
		return caPath, certPath, keyPath, nil
	}
	sv, err := tlsgen.New("certfleet testenv CA", []string{"localhost", "pebble"}, time.Now(), 5*365*24*time.Hour)
	if err != nil {
		return "", "", "", fmt.Errorf("testenv: Pebble's serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(sv.LeafKey)
	if err != nil {
		return "", "", "", err
	}
	for path, block := range map[string]*pem.Block{
		caPath:   {Type: "CERTIFICATE", Bytes: sv.CADER},
		certPath: {Type: "CERTIFICATE", Bytes: sv.LeafDER},
		keyPath:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return "", "", "", fmt.Errorf("testenv: writing %s: %w", path, err)
		}
	}
	return caPath, certPath, keyPath, nil
}
