// Package tlsgen makes throwaway certificate authorities and loopback
// serving certificates for the test stack (Pebble's HTTPS, the CA proxy).
package tlsgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Serving is a throwaway CA and a leaf it signed for 127.0.0.1, ::1 and the
// given DNS names.
type Serving struct {
	CADER, LeafDER []byte
	LeafKey        *ecdsa.PrivateKey
}

// New creates a CA named caName and a serving leaf valid from an hour before
// now for validity.
func New(caName string, dnsNames []string, now time.Time, validity time.Duration) (Serving, error) {
	ca, err := NewCA(caName, now, validity)
	if err != nil {
		return Serving{}, err
	}
	leafDER, leafKey, err := ca.Server(dnsNames, now, validity)
	if err != nil {
		return Serving{}, err
	}
	return Serving{CADER: ca.Cert.Raw, LeafDER: leafDER, LeafKey: leafKey}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// CA is a certificate authority that issues further leaves.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a self-signed CA valid from an hour before now for validity.
func NewCA(name string, now time.Time, validity time.Duration) (CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CA{}, fmt.Errorf("tlsgen: generating the CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return CA{}, fmt.Errorf("tlsgen: signing the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return CA{}, err
	}
	return CA{Cert: cert, Key: key}, nil
}

// Server issues a serving certificate for 127.0.0.1, ::1 and dnsNames.
func (ca CA) Server(dnsNames []string, now time.Time, validity time.Duration) (der []byte, key *ecdsa.PrivateKey, err error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    dnsNames,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, now, validity)
}

// Client issues a client certificate whose subject is CN=commonName.
func (ca CA) Client(commonName string, now time.Time, validity time.Duration) (der []byte, key *ecdsa.PrivateKey, err error) {
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, now, validity)
}

func (ca CA) issue(tmpl *x509.Certificate, now time.Time, validity time.Duration) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsgen: generating a key: %w", err)
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsgen: signing %s: %w", tmpl.Subject.CommonName, err)
	}
	return der, key, nil
}
