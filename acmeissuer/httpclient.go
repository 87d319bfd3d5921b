package acmeissuer

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"time"
)

// NewHTTPClient returns a client for talking to CAs: the system roots plus,
// when extraRootFile is set, the PEM certificates in it (a private or test
// CA such as Pebble's), TLS 1.2 at least, and the given overall timeout.
// Errors name the file, never its content.
func NewHTTPClient(extraRootFile string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 32
	if extraRootFile != "" {
		pemBytes, err := os.ReadFile(extraRootFile)
		if err != nil {
			return nil, fmt.Errorf("acmeissuer: reading extra root: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("acmeissuer: %s holds no PEM certificate", extraRootFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}
