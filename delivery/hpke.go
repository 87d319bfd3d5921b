package delivery

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// The HPKE (RFC 9180) suite every delivery is sealed with, in base mode:
// DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. P-256 rather than
// X25519 so that common HPKE libraries open it (Python's hpke package, for
// one, has no X25519 KEM). The ids are those of RFC 9180's registries and go
// into every record (kem_id, kdf_id, aead_id), so a reader can refuse a
// suite it does not know.
const (
	KEMID  = 0x0010 // DHKEM(P-256, HKDF-SHA256)
	KDFID  = 0x0001 // HKDF-SHA256
	AEADID = 0x0002 // AES-256-GCM
)

// Info is HPKE's info parameter of every delivery of format version 1.
const Info = "certfleet key delivery v1"

var (
	suiteKDF  = hpke.HKDFSHA256()
	suiteAEAD = hpke.AES256GCM()
)

// AAD is the additional data a delivery's key is sealed with: the format
// label, the certificate identity, its serial and the SHA-256 of its chain
// (hex), one per line. A sealed key therefore opens only as the key of that
// certificate: moved to another record, or with the chain swapped, it fails
// authentication.
//
//	"certfleet key delivery v1\n" identity "\n" serial "\n" hex(sha256(chain_pem))
func AAD(identity, serial, chainPEM string) []byte {
	sum := sha256.Sum256([]byte(chainPEM))
	return []byte(Info + "\n" + identity + "\n" + serial + "\n" + hex.EncodeToString(sum[:]))
}

// PublicKey is a recipient's public key: a P-256 point.
type PublicKey struct{ k *ecdh.PublicKey }

// PrivateKey is a recipient's private key. It stays on the recipient's
// side: only its PublicKey is registered.
type PrivateKey struct{ k *ecdh.PrivateKey }

// GenerateKey makes a recipient key pair.
func GenerateKey() (*PrivateKey, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{k}, nil
}

// Public returns the private key's public half.
func (k *PrivateKey) Public() PublicKey { return PublicKey{k.k.PublicKey()} }

// String never shows key material.
func (k *PrivateKey) String() string {
	return "delivery.PrivateKey{" + k.Public().KeyID()[:16] + "...}"
}

// GoString is String, so %#v shows no key either.
func (k *PrivateKey) GoString() string { return k.String() }

// Bytes is the public key as HPKE serialises it (SerializePublicKey: the
// uncompressed point, 65 bytes): what the database stores.
func (p PublicKey) Bytes() []byte { return p.k.Bytes() }

// KeyID names the public key: lower-case hex SHA-256 of Bytes. Records carry
// it so a reader knows which of them are sealed to it without trying.
func (p PublicKey) KeyID() string {
	sum := sha256.Sum256(p.k.Bytes())
	return hex.EncodeToString(sum[:])
}

// Valid reports whether p holds a key.
func (p PublicKey) Valid() bool { return p.k != nil }

// ParsePublicKey reads a public key from its HPKE serialisation (Bytes).
func ParsePublicKey(b []byte) (PublicKey, error) {
	k, err := ecdh.P256().NewPublicKey(b)
	if err != nil {
		return PublicKey{}, errors.New("delivery: not a P-256 public key (65-byte uncompressed point)")
	}
	return PublicKey{k}, nil
}

// Key files are PEM: the private key as PKCS#8 ("PRIVATE KEY", as OpenSSL and
// Python's cryptography read it), the public key as SubjectPublicKeyInfo
// ("PUBLIC KEY").

// MarshalPrivateKeyPEM encodes k as a PKCS#8 PEM block.
func MarshalPrivateKeyPEM(k *PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.k)
	if err != nil {
		return nil, fmt.Errorf("delivery: encoding the private key: %w", err)
	}
	defer clear(der)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes p as a SubjectPublicKeyInfo PEM block.
func MarshalPublicKeyPEM(p PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(p.k)
	if err != nil {
		return nil, fmt.Errorf("delivery: encoding the public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM reads a recipient private key file (PKCS#8 PEM of a
// P-256 key). Errors never quote the file's content.
func ParsePrivateKeyPEM(b []byte) (*PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("delivery: not a PEM \"PRIVATE KEY\" (PKCS#8) block; make one with 'certfleet recipient keygen'")
	}
	defer clear(block.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("delivery: the PEM block is not a PKCS#8 private key")
	}
	var ek *ecdh.PrivateKey
	switch k := k.(type) {
	case *ecdh.PrivateKey:
		ek = k
	case *ecdsa.PrivateKey:
		if ek, err = k.ECDH(); err != nil {
			return nil, errors.New("delivery: the private key is not on P-256")
		}
	default:
		return nil, fmt.Errorf("delivery: a %T private key; want P-256", k)
	}
	if ek.Curve() != ecdh.P256() {
		return nil, errors.New("delivery: the private key is not on P-256")
	}
	return &PrivateKey{ek}, nil
}

// ParsePublicKeyPEM reads a recipient public key file (SubjectPublicKeyInfo
// PEM of a P-256 key).
func ParsePublicKeyPEM(b []byte) (PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return PublicKey{}, errors.New("delivery: no PEM block; want a \"PUBLIC KEY\" made by 'certfleet recipient keygen'")
	}
	if strings.Contains(block.Type, "PRIVATE") {
		return PublicKey{}, errors.New("delivery: this is a private key; pass the public key (the .pub file 'certfleet recipient keygen' writes): the private key stays with the recipient")
	}
	if block.Type != "PUBLIC KEY" {
		return PublicKey{}, fmt.Errorf("delivery: a PEM %q block; want \"PUBLIC KEY\"", block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return PublicKey{}, fmt.Errorf("delivery: reading the public key: %w", err)
	}
	var ek *ecdh.PublicKey
	switch k := k.(type) {
	case *ecdh.PublicKey:
		ek = k
	case *ecdsa.PublicKey:
		if ek, err = k.ECDH(); err != nil {
			return PublicKey{}, errors.New("delivery: the public key is not on P-256")
		}
	default:
		return PublicKey{}, fmt.Errorf("delivery: a %T public key; want P-256", k)
	}
	if ek.Curve() != ecdh.P256() {
		return PublicKey{}, errors.New("delivery: the public key is not on P-256")
	}
	return PublicKey{ek}, nil
}

// sealKey seals key (as PKCS#8 DER) to p with aad; it returns HPKE's
// encapsulated key and the ciphertext.
func sealKey(p PublicKey, key crypto.Signer, aad []byte) (enc, ciphertext []byte, err error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: encoding the certificate key: %w", err)
	}
	defer clear(der)
	pk, err := hpke.NewDHKEMPublicKey(p.k)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: recipient key: %w", err)
	}
	enc, s, err := hpke.NewSender(pk, suiteKDF, suiteAEAD, []byte(Info))
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: HPKE setup: %w", err)
	}
	ct, err := s.Seal(aad, der)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: HPKE seal: %w", err)
	}
	return enc, ct, nil
}

// ErrNotOpened means a sealed key did not open: it is sealed to another
// key, or the record was altered.
var ErrNotOpened = errors.New("delivery: the sealed key does not open with this recipient key")

// openKey opens a sealed key and returns it as a crypto.Signer.
func openKey(k *PrivateKey, enc, ciphertext, aad []byte) (crypto.Signer, error) {
	sk, err := hpke.NewDHKEMPrivateKey(k.k)
	if err != nil {
		return nil, fmt.Errorf("delivery: recipient key: %w", err)
	}
	r, err := hpke.NewRecipient(enc, sk, suiteKDF, suiteAEAD, []byte(Info))
	if err != nil {
		return nil, ErrNotOpened
	}
	der, err := r.Open(aad, ciphertext)
	if err != nil {
		return nil, ErrNotOpened
	}
	defer clear(der)
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("delivery: the opened key is not PKCS#8")
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("delivery: the opened key (%T) cannot sign", key)
	}
	return signer, nil
}
