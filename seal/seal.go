// Package seal owns certfleet's encryption of private keys at rest: AES-256-GCM
// under a key-encryption key (KEK) chosen from a Keyring, in self-describing
// blobs that name the key that sealed them so keys can be rotated.
//
// It owns the blob format and the keyring file format below, and nothing else:
// it touches no database table, no network and no logger, and it never puts key
// material (KEKs or the plaintext it seals) into an error or a String method.
// Callers store blobs where they like (issued_certificates.sealed_key,
// acme_accounts.sealed_key) and decide the additional data that binds a blob to
// its row (see AAD).
//
// # Blob format (version 1)
//
//	offset 0        version byte, 1
//	offset 1        n, the key id's length (1..64)
//	offset 2        key id, n bytes of [A-Za-z0-9._-]
//	offset 2+n      12-byte random nonce
//	offset 14+n     ciphertext followed by the 16-byte GCM tag
//
// The GCM additional data is the header (version, n and key id) followed by the
// caller's aad, so neither the key id nor the row a blob belongs to can be
// changed without Open failing.
//
// # Keyring format
//
// A keyring is text, one entry per line (or separated by ';', so it fits in one
// environment variable); blank lines and lines starting with '#' are ignored:
//
//	# certfleet KEKs: id=32 bytes in base64 (or 64 hex digits)
//	2024-06=q7l0J3m6...=
//	2025-01=Zm9vYmFy...=
//	active=2025-01
//
// New blobs are sealed under the active key; every listed key can open. With a
// single key, active= may be left out. A text
// that is a single bare key (base64 or hex of 32 bytes) is shorthand for
// "k0=<key>;active=k0". Rotate by adding a key, making it active, and (later)
// re-sealing old blobs with Reseal before removing the old key.
//
// Start with LoadKeyringFile (production: a mounted file no group or other may
// read) or LoadKeyringEnv (local use only); both return a *Keyring, which
// implements Sealer, and both refuse weak keys (CheckKey: all zero, one byte or
// a short pattern repeated, printable text). A KMS-backed Sealer can replace it
// without callers changing.
package seal

import (
	"context"
	"encoding/binary"
	"errors"
)

// Sealer encrypts and decrypts small secrets (private keys) at rest.
//
// Contract: Seal returns a self-describing blob that Open of the same Sealer
// (or of a later one holding the same key) turns back into plaintext, given the
// same aad. Open fails with an error matching ErrMalformed, ErrUnknownKey or
// ErrAuthentication for blobs it cannot open and never panics on any input.
// Neither method puts key material or plaintext into its error. Both honour ctx
// where they block (a KMS call); the local Keyring does not block. Both are safe
// for concurrent use.
type Sealer interface {
	Seal(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Open(ctx context.Context, blob, aad []byte) ([]byte, error)
}

// Errors Open returns (wrapped); callers branch with errors.Is.
var (
	// ErrMalformed means the blob is not a sealed blob of a known version.
	ErrMalformed = errors.New("seal: malformed blob")
	// ErrUnknownKey means the blob names a key id the keyring does not hold.
	ErrUnknownKey = errors.New("seal: blob sealed under an unknown key id")
	// ErrAuthentication means the key is known but the blob or its additional
	// data was altered, or it belongs to another row (wrong aad).
	ErrAuthentication = errors.New("seal: blob failed authentication")
)

// Purposes name what a sealed secret is; they go into AAD so a certificate key
// blob cannot be opened as an account key and vice versa.
const (
	PurposeCertKey    = "cert-key"
	PurposeAccountKey = "account-key"
)

// AAD builds unambiguous additional data from a purpose and the identity of the
// row a blob belongs to, e.g. AAD(PurposeCertKey, certificateIdentity) or
// AAD(PurposeAccountKey, caDirectory, tenant). Each part is length-prefixed, so
// ("a", "bc") and ("ab", "c") differ.
func AAD(purpose string, parts ...string) []byte {
	n := 8 + len(purpose)
	for _, p := range parts {
		n += 4 + len(p)
	}
	b := make([]byte, 0, n)
	b = append(b, "certfleet\x00"...)
	for _, p := range append([]string{purpose}, parts...) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}
