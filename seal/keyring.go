package seal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"strings"
)

const (
	version1  = 1
	nonceSize = 12
	tagSize   = 16
	maxIDLen  = 64
	keySize   = 32
)

// Keyring is a set of AES-256 KEKs by id with one active id. It keeps only the
// expanded AES ciphers, never prints them, and is safe for concurrent use (it
// is immutable after construction).
type Keyring struct {
	active string
	aeads  map[string]cipher.AEAD
}

var _ Sealer = (*Keyring)(nil)

// NewKeyring builds a keyring from raw 32-byte keys by id; active must be one of
// them. The caller may wipe keys after the call.
func NewKeyring(active string, keys map[string][]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("seal: keyring has no keys")
	}
	k := &Keyring{active: active, aeads: make(map[string]cipher.AEAD, len(keys))}
	for id, key := range keys {
		if !validID(id) {
			return nil, fmt.Errorf("seal: invalid key id (want 1-%d of A-Z a-z 0-9 . _ -)", maxIDLen)
		}
		if len(key) != keySize {
			return nil, fmt.Errorf("seal: key %q is %d bytes, want %d", id, len(key), keySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("seal: key %q: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("seal: key %q: %w", id, err)
		}
		k.aeads[id] = aead
	}
	if active == "" {
		return nil, fmt.Errorf("seal: keyring names no active key")
	}
	if _, ok := k.aeads[active]; !ok {
		return nil, fmt.Errorf("seal: active key %q is not in the keyring", active)
	}
	return k, nil
}

// ActiveKeyID is the id new blobs are sealed under.
func (k *Keyring) ActiveKeyID() string { return k.active }

// KeyIDs lists the ids the keyring can open, sorted.
func (k *Keyring) KeyIDs() []string {
	ids := make([]string, 0, len(k.aeads))
	for id := range k.aeads {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// String describes the keyring by its ids only.
func (k *Keyring) String() string {
	return fmt.Sprintf("seal.Keyring{active: %s, keys: %s}", k.active, strings.Join(k.KeyIDs(), ","))
}

// GoString is String, so %#v prints no cipher state either.
func (k *Keyring) GoString() string { return k.String() }

// LogValue keeps slog from reflecting into the ciphers.
func (k *Keyring) LogValue() slog.Value {
	return slog.GroupValue(slog.String("active", k.active), slog.Any("keys", k.KeyIDs()))
}

// Seal encrypts plaintext under the active key, binding aad. ctx is unused.
func (k *Keyring) Seal(_ context.Context, plaintext, aad []byte) ([]byte, error) {
	aead := k.aeads[k.active]
	hdr := header(k.active)
	out := make([]byte, len(hdr)+nonceSize, len(hdr)+nonceSize+len(plaintext)+tagSize)
	copy(out, hdr)
	nonce := out[len(hdr):]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: reading a nonce: %w", err)
	}
	return aead.Seal(out, nonce, plaintext, additional(hdr, aad)), nil
}

// Open decrypts a blob sealed under any key of the keyring with the same aad.
// ctx is unused.
func (k *Keyring) Open(_ context.Context, blob, aad []byte) ([]byte, error) {
	id, rest, err := parse(blob)
	if err != nil {
		return nil, err
	}
	aead, ok := k.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, id)
	}
	hdr := blob[:len(blob)-len(rest)]
	plain, err := aead.Open(nil, rest[:nonceSize], rest[nonceSize:], additional(hdr, aad))
	if err != nil {
		return nil, fmt.Errorf("%w (key id %q)", ErrAuthentication, id)
	}
	return plain, nil
}

// KeyID returns the id of the key that sealed blob, without opening it: a
// rotation sweep uses it to find blobs that need Reseal.
func KeyID(blob []byte) (string, error) {
	id, _, err := parse(blob)
	return id, err
}

// ActiveKeyIDer is the optional ability of a Sealer to say which key new blobs
// get; Reseal uses it to skip blobs that are already current.
type ActiveKeyIDer interface {
	ActiveKeyID() string
}

// Reseal re-encrypts blob under s's active key. It returns the blob unchanged
// and false when s reports (ActiveKeyIDer) that blob is already under its
// active key, and otherwise the new blob and true. The plaintext never leaves
// this function.
func Reseal(ctx context.Context, s Sealer, blob, aad []byte) ([]byte, bool, error) {
	if a, ok := s.(ActiveKeyIDer); ok {
		if id, err := KeyID(blob); err == nil && id == a.ActiveKeyID() {
			return blob, false, nil
		}
	}
	plain, err := s.Open(ctx, blob, aad)
	if err != nil {
		return nil, false, fmt.Errorf("seal: re-sealing: %w", err)
	}
	defer clear(plain)
	out, err := s.Seal(ctx, plain, aad)
	if err != nil {
		return nil, false, fmt.Errorf("seal: re-sealing: %w", err)
	}
	return out, true, nil
}

func header(id string) []byte {
	return append([]byte{version1, byte(len(id))}, id...)
}

func additional(hdr, aad []byte) []byte {
	return append(slices.Clip(hdr), aad...)
}

// parse splits a blob into its key id and nonce||ciphertext, checking every
// length before slicing.
func parse(blob []byte) (id string, rest []byte, err error) {
	if len(blob) < 2 {
		return "", nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(blob))
	}
	if blob[0] != version1 {
		return "", nil, fmt.Errorf("%w: unknown version %d", ErrMalformed, blob[0])
	}
	n := int(blob[1])
	if n == 0 || n > maxIDLen || len(blob) < 2+n+nonceSize+tagSize {
		return "", nil, fmt.Errorf("%w: truncated or bad key id length", ErrMalformed)
	}
	id = string(blob[2 : 2+n])
	if !validID(id) {
		return "", nil, fmt.Errorf("%w: bad key id", ErrMalformed)
	}
	return id, blob[2+n:], nil
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
