package seal

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// EnvKeyring is the environment variable LoadKeyringEnv reads by default.
const EnvKeyring = "CERTFLEET_SEAL_KEYS"

// LoadKeyringFile reads a keyring in the format of the package doc from path.
// Errors name the file and line, never a key.
func LoadKeyringFile(path string) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal: reading keyring file: %w", err)
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
// newlines, or one bare key.
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

// ParseKeyring parses the keyring format of the package doc. Errors name the
// entry number and key id, never a key or a line's text.
func ParseKeyring(text string) (*Keyring, error) {
	if key, ok := decodeKey(strings.TrimSpace(text)); ok {
		defer clear(key)
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
				return nil, fmt.Errorf("seal: keyring entry %d: key %q is not 32 bytes in base64 or hex", i+1, name)
			}
			keys[name] = key
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
