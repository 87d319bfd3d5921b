package acmeissuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
)

// KeyType names the certificate private key algorithm. The names match
// managed_certificates.key_type.
type KeyType string

// Key types; the zero value means ECDSAP256.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
)

// Valid reports whether k is a known key type (or empty).
func (k KeyType) Valid() bool {
	switch k {
	case "", ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096:
		return true
	}
	return false
}

// GenerateKey makes a new private key of type k.
func (k KeyType) GenerateKey() (crypto.Signer, error) {
	switch k {
	case "", ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("%w: unknown key type %q", ErrInvalidRequest, string(k))
}
