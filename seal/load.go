package seal

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/certfleet/certfleet/internal/secretfile"
)

// EnvKeyring is the environment variable LoadKeyringEnv reads by default.
const EnvKeyring = "CERTFLEET_SEAL_KEYS"

// LoadKeyringFile reads a keyring in the format of the package doc from path,
// the way production loads it (a mounted Secret). The file must not be
// accessible to group or others (internal/secretfile: mode 0600 or 0400, or
// a root-owned 0440/0640 as a Secret volume with fsGroup mounts it); weak
// keys are refused as ParseKeyring refuses them. Errors name the file and
// entry, never a key.
func LoadKeyringFile(path string) (*Keyring, error) {
	data, err := secretfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("seal: keyring: %w", err)
	}
	defer clear(data)
	k, err := ParseKeyring(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadKeyringEnv reads a keyring from the environment variable name (EnvKeyring
// when name is ""): either the keyring format with entries separated by ';' or
// newlines, or one bare key. It is for local use (tests, the demo, a
// developer's shell): an environment is readable by anyone who may inspect
// the process (/proc/PID/environ, `kubectl describe`, crash reports), so
// production mounts the keyring as a file (LoadKeyringFile).
func LoadKeyringEnv(name string) (*Keyring, error) {
	if name == "" {
		name = EnvKeyring
	}
	v, ok := os.LookupEnv(name)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("seal: environment variable %s is not set", name)
	}
	k, err := ParseKeyring(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return k, nil
}

// ParseKeyring parses the keyring format of the package doc. It refuses weak
// keys (CheckKey): an operator's keyring must not be a placeholder. Errors
// name the entry number and key id, never a key or a line's text.
func ParseKeyring(text string) (*Keyring, error) {
	if key, ok := decodeKey(strings.TrimSpace(text)); ok {
		defer clear(key)
		if err := CheckKey(key); err != nil {
			return nil, fmt.Errorf("seal: keyring: the key %w", err)
		}
		return NewKeyring("k0", map[string][]byte{"k0": key})
	}
	keys := map[string][]byte{}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	var active string
	entries := strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ';' })
	for i, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" || strings.HasPrefix(e, "#") {
			continue
		}
		name, value, ok := strings.Cut(e, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case !ok:
			return nil, fmt.Errorf("seal: keyring entry %d: want id=key or active=id", i+1)
		case name == "active":
			if active != "" {
				return nil, fmt.Errorf("seal: keyring entry %d: active given twice", i+1)
			}
			if !validID(value) {
				return nil, fmt.Errorf("seal: keyring entry %d: active names an invalid key id", i+1)
			}
			active = value
		case !validID(name):
			return nil, fmt.Errorf("seal: keyring entry %d: invalid key id (want 1-%d of A-Z a-z 0-9 . _ -)", i+1, maxIDLen)
		default:
			if _, dup := keys[name]; dup {
				return nil, fmt.Errorf("seal: keyring entry %d: key id %q given twice", i+1, name)
			}
			key, ok := decodeKey(value)
			if !ok {
				if n := decodedLen(value); n >= 0 {
					return nil, fmt.Errorf("seal: keyring entry %d: key %q is %d bytes, want %d (generate one with 'certfleet keys generate')", i+1, name, n, keySize)
				}
				return nil, fmt.Errorf("seal: keyring entry %d: key %q is not 32 bytes in base64 or hex", i+1, name)
			}
			keys[name] = key
			if err := CheckKey(key); err != nil {
				return nil, fmt.Errorf("seal: keyring entry %d: key %q %w", i+1, name, err)
			}
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("seal: keyring has no keys")
	}
	if active == "" && len(keys) == 1 {
		for id := range keys {
			active = id // one key: it is the active one
		}
	}
	if active == "" {
		return nil, fmt.Errorf("seal: keyring of %d keys has no active= entry", len(keys))
	}
	return NewKeyring(active, keys)
}

// decodeKey accepts 64 hex digits or standard/URL base64 (padded or not) of 32
// bytes.
func decodeKey(s string) ([]byte, bool) {
	if len(s) == 2*keySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, true
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == keySize {
			return b, true
		} else if err == nil {
			clear(b)
		}
	}
	return nil, false
}

// decodedLen is the length value decodes to in hex or base64 when it is not a
// key (a wrong length), or -1 when it decodes in neither.
func decodedLen(s string) int {
	if b, err := hex.DecodeString(s); err == nil && len(s) > 0 {
		clear(b)
		return len(b)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(s) > 0 {
			clear(b)
			return len(b)
		}
	}
	return -1
}

// CheckKey refuses a key-encryption key that cannot be a random one: the
// wrong length, all zero bytes (the placeholder of an example Secret), one
// byte repeated, a short pattern repeated, fewer than 12 distinct byte
// values, or printable text (a passphrase is not a key). A random 32-byte
// key trips none of these but with negligible probability (the likeliest,
// all bytes printable, is below 1e-13). The error says why, never the key;
// it reads after "key": "key is all zero bytes".
func CheckKey(key []byte) error {
	if len(key) != keySize {
		return fmt.Errorf("is %d bytes, want %d", len(key), keySize)
	}
	const hint = " (generate one with 'certfleet keys generate')"
	distinct := map[byte]bool{}
	zero, printable := true, true
	for _, b := range key {
		distinct[b] = true
		zero = zero && b == 0
		printable = printable && b >= 0x20 && b <= 0x7e
	}
	switch {
	case zero:
		return fmt.Errorf("is all zero bytes, a placeholder" + hint)
	case len(distinct) == 1:
		return fmt.Errorf("is one byte repeated" + hint)
	}
	for period := 2; period <= keySize/2; period++ {
		repeats := true
		for i := period; i < keySize && repeats; i++ {
			repeats = key[i] == key[i-period]
		}
		if repeats {
			return fmt.Errorf("repeats a %d-byte pattern%s", period, hint)
		}
	}
	if len(distinct) < 12 {
		return fmt.Errorf("has only %d distinct byte values, it is not random%s", len(distinct), hint)
	}
	if printable {
		return fmt.Errorf("is printable text, not random bytes (base64-encode 32 random bytes instead)" + hint)
	}
	return nil
}

// GenerateKeyText returns a new random keyring entry "id=<base64 key>" for an
// operator to append to a keyring (it is the only function that returns key
// material, on purpose).
func GenerateKeyText(id string) (string, error) {
	if !validID(id) {
		return "", fmt.Errorf("seal: invalid key id (want 1-%d of A-Z a-z 0-9 . _ -)", maxIDLen)
	}
	key := make([]byte, keySize)
	if _, err := randRead(key); err != nil {
		return "", fmt.Errorf("seal: generating a key: %w", err)
	}
	defer clear(key)
	return id + "=" + base64.StdEncoding.EncodeToString(key), nil
}
