package seal

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

var ctx = context.Background()

// key is a fixed 32-byte key per seed that passes CheckKey.
func key(b byte) []byte { k := sha256.Sum256([]byte{b}); return k[:] }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func mustKeyring(t testing.TB, active string, keys map[string][]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(active, keys)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := mustKeyring(t, "a", map[string][]byte{"a": key(1)})
	aad := AAD(PurposeCertKey, "identity-1")
	for _, plain := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("secret"), 1000)} {
		blob, err := k.Seal(ctx, plain, aad)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := KeyID(blob); err != nil || id != "a" {
			t.Fatalf("KeyID = %q, %v", id, err)
		}
		// A short plaintext says nothing: one byte turns up in 33 random
		// bytes one time in eight (this check once failed on "x" so).
		if len(plain) >= 16 && bytes.Contains(blob, plain) {
			t.Fatal("blob contains the plaintext")
		}
		got, err := k.Open(ctx, blob, aad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("Open = %q, %v", got, err)
		}
	}
	// Two seals of the same plaintext differ (random nonce).
	b1, _ := k.Seal(ctx, []byte("same"), aad)
	b2, _ := k.Seal(ctx, []byte("same"), aad)
	if bytes.Equal(b1, b2) {
		t.Error("two seals are identical")
	}
}

func TestOpenRejects(t *testing.T) {
	k := mustKeyring(t, "a", map[string][]byte{"a": key(1)})
	other := mustKeyring(t, "b", map[string][]byte{"b": key(2)})
	sameIDOtherKey := mustKeyring(t, "a", map[string][]byte{"a": key(3)})
	aad := AAD(PurposeCertKey, "row-1")
	blob, err := k.Seal(ctx, []byte("private key"), aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := bytes.Clone(blob); b[i] ^= 1; return b }
	cases := []struct {
		name string
		k    *Keyring
		blob []byte
		aad  []byte
		want error
	}{
		{"empty", k, nil, aad, ErrMalformed},
		{"one byte", k, []byte{1}, aad, ErrMalformed},
		{"unknown version", k, append([]byte{2}, blob[1:]...), aad, ErrMalformed},
		{"zero id length", k, append([]byte{1, 0}, blob[2:]...), aad, ErrMalformed},
		{"id too long", k, append([]byte{1, 65}, bytes.Repeat([]byte("a"), 200)...), aad, ErrMalformed},
		{"truncated", k, blob[:len(blob)-20], aad, ErrMalformed},
		{"bad id charset", k, append([]byte{1, 1, '/'}, blob[3:]...), aad, ErrMalformed},
		{"unknown key id", other, blob, aad, ErrUnknownKey},
		{"same id, other key", sameIDOtherKey, blob, aad, ErrAuthentication},
		{"other row", k, blob, AAD(PurposeCertKey, "row-2"), ErrAuthentication},
		{"other purpose", k, blob, AAD(PurposeAccountKey, "row-1"), ErrAuthentication},
		{"no aad", k, blob, nil, ErrAuthentication},
		{"flipped nonce", k, flip(3), aad, ErrAuthentication},
		{"flipped ciphertext", k, flip(len(blob) - 20), aad, ErrAuthentication},
		{"flipped tag", k, flip(len(blob) - 1), aad, ErrAuthentication},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.k.Open(ctx, c.blob, c.aad)
			if !errors.Is(err, c.want) {
				t.Fatalf("Open = %q, %v; want %v", got, err, c.want)
			}
		})
	}
}

func TestAADIsUnambiguous(t *testing.T) {
	if bytes.Equal(AAD("p", "a", "bc"), AAD("p", "ab", "c")) {
		t.Error(`AAD("a","bc") == AAD("ab","c")`)
	}
	if bytes.Equal(AAD("p", "a"), AAD("pa")) {
		t.Error("purpose and parts run together")
	}
}

// A blob sealed under an old key still opens after a new key becomes active;
// Reseal moves it to the new key; once the old key is gone only re-sealed blobs open.
func TestRotation(t *testing.T) {
	aad := AAD(PurposeAccountKey, "https://ca/dir", "tenant")
	v1 := mustKeyring(t, "2024", map[string][]byte{"2024": key(1)})
	old, err := v1.Seal(ctx, []byte("account key"), aad)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := ParseKeyring("2024=" + b64(key(1)) + "\n2025=" + b64(key(2)) + "\nactive=2025\n")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := v2.Open(ctx, old, aad); err != nil || string(got) != "account key" {
		t.Fatalf("old blob under new keyring: %q, %v", got, err)
	}
	fresh, _ := v2.Seal(ctx, []byte("new"), aad)
	if id, _ := KeyID(fresh); id != "2025" {
		t.Fatalf("new blob sealed under %q, want 2025", id)
	}
	resealed, changed, err := Reseal(ctx, v2, old, aad)
	if err != nil || !changed {
		t.Fatalf("Reseal = changed %v, %v", changed, err)
	}
	if id, _ := KeyID(resealed); id != "2025" {
		t.Fatalf("re-sealed under %q", id)
	}
	if same, changed, err := Reseal(ctx, v2, resealed, aad); err != nil || changed || !bytes.Equal(same, resealed) {
		t.Fatalf("Reseal of a current blob: changed %v, %v", changed, err)
	}
	if _, _, err := Reseal(ctx, v2, old, AAD(PurposeAccountKey, "other")); !errors.Is(err, ErrAuthentication) {
		t.Fatalf("Reseal with wrong aad: %v", err)
	}
	v3 := mustKeyring(t, "2025", map[string][]byte{"2025": key(2)})
	if got, err := v3.Open(ctx, resealed, aad); err != nil || string(got) != "account key" {
		t.Fatalf("re-sealed blob after retiring the old key: %q, %v", got, err)
	}
	if _, err := v3.Open(ctx, old, aad); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old blob after retiring its key: %v", err)
	}
}

func TestParseKeyring(t *testing.T) {
	k1, k2 := b64(key(1)), b64(key(2))
	cases := []struct {
		name, text, active, err string
	}{
		{"bare base64", k1, "k0", ""},
		{"bare raw url base64", base64.RawURLEncoding.EncodeToString(key(0xfb)), "k0", ""},
		{"bare hex", hex.EncodeToString(key(1)), "k0", ""},
		{"bare with newline", k1 + "\n", "k0", ""},
		{"file", "# comment\n\na=" + k1 + "\nb = " + k2 + "\nactive = b\n", "b", ""},
		{"env semicolons", "a=" + k1 + ";b=" + k2 + ";active=a", "a", ""},
		{"crlf", "a=" + k1 + "\r\nactive=a\r\n", "a", ""},
		{"single key, no active", "a=" + k1, "a", ""},
		{"two keys, no active", "a=" + k1 + ";b=" + k2, "", "no active= entry"},
		{"active unknown", "a=" + k1 + ";active=c", "", `active key "c" is not in the keyring`},
		{"active twice", "a=" + k1 + ";active=a;active=a", "", "active given twice"},
		{"duplicate id", "a=" + k1 + ";a=" + k2 + ";active=a", "", `key id "a" given twice`},
		{"short key", "a=" + b64(key(1)[:16]) + ";active=a", "", `entry 1: key "a" is 16 bytes, want 32`},
		{"long hex key", "a=" + hex.EncodeToString(append(key(1), 1)) + ";active=a", "", `entry 1: key "a" is 33 bytes, want 32`},
		{"not base64", "a=!!!!;active=a", "", "not 32 bytes"},
		{"no equals", "a " + hex.EncodeToString(key(1)), "", "entry 1: want id=key"},
		{"bad id", "a/b=" + k1 + ";active=a/b", "", "entry 1: invalid key id"},
		{"empty", "", "", "no keys"},
		{"only comments", "# nothing\n", "", "no keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := ParseKeyring(c.text)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v; want %q", err, c.err)
				}
				assertNoKeyMaterial(t, err.Error(), c.text)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.ActiveKeyID() != c.active {
				t.Fatalf("active = %q, want %q", k.ActiveKeyID(), c.active)
			}
		})
	}
}

// assertNoKeyMaterial fails when s contains any run of 16+ characters of a
// key-looking token of text.
func assertNoKeyMaterial(t *testing.T, s, text string) {
	t.Helper()
	for _, f := range strings.FieldsFunc(text, func(r rune) bool { return r == '=' || r == ';' || r == '\n' || r == ' ' }) {
		if len(f) >= 16 && strings.Contains(s, f[:16]) {
			t.Fatalf("%q contains key material", s)
		}
	}
}

func TestLoadKeyringFileAndEnv(t *testing.T) {
	secret := b64(key(7))
	path := t.TempDir() + "/keys"
	if err := writeFile(path, "old="+b64(key(6))+"\nnew="+secret+"\nactive=new\n"); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeyringFile(path)
	if err != nil || k.ActiveKeyID() != "new" || len(k.KeyIDs()) != 2 {
		t.Fatalf("LoadKeyringFile = %v, %v", k, err)
	}
	if _, err := LoadKeyringFile(path + ".missing"); err == nil {
		t.Fatal("missing file loaded")
	}
	t.Setenv(EnvKeyring, "k="+secret)
	if k, err := LoadKeyringEnv(""); err != nil || k.ActiveKeyID() != "k" {
		t.Fatalf("LoadKeyringEnv = %v, %v", k, err)
	}
	t.Setenv("CERTFLEET_TEST_BAD", "k="+secret[:20])
	_, err = LoadKeyringEnv("CERTFLEET_TEST_BAD")
	if err == nil || !strings.Contains(err.Error(), "CERTFLEET_TEST_BAD") {
		t.Fatalf("bad env: %v", err)
	}
	assertNoKeyMaterial(t, err.Error(), secret)
	if _, err := LoadKeyringEnv("CERTFLEET_TEST_UNSET_XYZ"); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Fatalf("unset env: %v", err)
	}
}

// Formatting a keyring in any verb prints ids, never key bytes.
func TestKeyringDoesNotPrintKeys(t *testing.T) {
	raw := key(0xab)
	k := mustKeyring(t, "id1", map[string][]byte{"id1": raw})
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		s := fmt.Sprintf(verb, k)
		if strings.Contains(s, hex.EncodeToString(raw[:8])) || strings.Contains(s, "abab") || strings.Contains(s, string(raw[:4])) {
			t.Errorf("%s prints key material: %s", verb, s)
		}
		if !strings.Contains(s, "id1") {
			t.Errorf("%s = %s; want the key id", verb, s)
		}
	}
}

func TestNewKeyringErrors(t *testing.T) {
	cases := []struct {
		name   string
		active string
		keys   map[string][]byte
		err    string
	}{
		{"no keys", "a", nil, "no keys"},
		{"short", "a", map[string][]byte{"a": make([]byte, 31)}, "31 bytes"},
		{"bad id", "a b", map[string][]byte{"a b": key(1)}, "invalid key id"},
		{"no active", "", map[string][]byte{"a": key(1)}, "no active key"},
		{"missing active", "b", map[string][]byte{"a": key(1)}, "not in the keyring"},
	}
	for _, c := range cases {
		if _, err := NewKeyring(c.active, c.keys); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: err = %v; want %q", c.name, err, c.err)
		}
	}
}

func TestSealPrivateKey(t *testing.T) {
	k := mustKeyring(t, "a", map[string][]byte{"a": key(1)})
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	aad := AAD(PurposeCertKey, "id")
	blob, err := SealPrivateKey(ctx, k, priv, aad)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenPrivateKey(ctx, k, blob, aad)
	if err != nil || !priv.Equal(got) {
		t.Fatalf("OpenPrivateKey = %v", err)
	}
	notKey, _ := k.Seal(ctx, []byte("not a key"), aad)
	if _, err := OpenPrivateKey(ctx, k, notKey, aad); err == nil || strings.Contains(err.Error(), "not a key") {
		t.Fatalf("OpenPrivateKey of garbage: %v", err)
	}
}

func TestGenerateKeyText(t *testing.T) {
	line, err := GenerateKeyText("2026-01")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKeyring(line)
	if err != nil || k.ActiveKeyID() != "2026-01" {
		t.Fatalf("generated line does not parse: %v", err)
	}
	if _, err := GenerateKeyText("bad id"); err == nil {
		t.Fatal("bad id accepted")
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// The example Secret's placeholder and other keys no random generator makes
// are refused, wherever the keyring comes from, without printing the key.
func TestWeakKeysRefused(t *testing.T) {
	pattern := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, 2)
	few := append(bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 3), 11, 12)
	few[0], few[31] = 200, 100 // no period, 13 distinct values: weak-looking but allowed
	cases := []struct {
		name, text, err string
	}{
		{"example Secret", "CHANGE-ME=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;active=CHANGE-ME", `key "CHANGE-ME" is all zero bytes`},
		{"bare zero key", b64(make([]byte, 32)), "the key is all zero bytes"},
		{"zero hex", "a=" + strings.Repeat("0", 64), `key "a" is all zero bytes`},
		{"one byte repeated", "a=" + b64(bytes.Repeat([]byte{7}, 32)), `key "a" is one byte repeated`},
		{"pattern", "a=" + b64(pattern), "repeats a 16-byte pattern"},
		{"pair", "a=" + b64(bytes.Repeat([]byte{0xde, 0xad}, 16)), "repeats a 2-byte pattern"},
		{"few values", "a=" + b64(append(bytes.Repeat([]byte{1, 2, 3, 4, 5}, 6), 9, 8)), "has only 7 distinct byte values"},
		{"passphrase", "a=" + b64([]byte("correct horse battery staple 42!")), "is printable text"},
		{"weak among good", "a=" + b64(key(1)) + ";b=" + b64(make([]byte, 32)) + ";active=a", `entry 2: key "b" is all zero bytes`},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseKeyring(c.text)
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "certfleet keys generate") {
				t.Fatalf("ParseKeyring: %v; want %q", err, c.err)
			}
			assertNoKeyMaterial(t, err.Error(), c.text)
			path := fmt.Sprintf("%s/keys%d", dir, i)
			if err := writeFile(path, c.text); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadKeyringFile(path); err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadKeyringFile: %v", err)
			}
			t.Setenv("CERTFLEET_TEST_WEAK", c.text)
			if _, err := LoadKeyringEnv("CERTFLEET_TEST_WEAK"); err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("LoadKeyringEnv: %v", err)
			}
		})
	}
	if err := CheckKey(few); err != nil {
		t.Fatalf("12 distinct values, no period: %v", err)
	}
	if err := CheckKey(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "is 16 bytes, want 32") {
		t.Fatalf("CheckKey of 16 bytes: %v", err)
	}
}

// Random keys pass (a false refusal would stop a worker at start).
func TestCheckKeyAcceptsRandomKeys(t *testing.T) {
	for i := 0; i < 20000; i++ {
		k := make([]byte, keySize)
		_, _ = rand.Read(k)
		if err := CheckKey(k); err != nil {
			t.Fatalf("random key refused: %v", err)
		}
	}
	text, err := GenerateKeyText("g")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseKeyring(text); err != nil {
		t.Fatalf("generated keyring refused: %v", err)
	}
}

// A keyring file others may read is refused at start, naming the file and
// its mode.
func TestLoadKeyringFileMode(t *testing.T) {
	path := t.TempDir() + "/keys"
	if err := writeFile(path, "a="+b64(key(1))); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o604, 0o640} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyringFile(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("mode %04o", mode)) {
			t.Fatalf("mode %04o: %v", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyringFile(path); err != nil {
		t.Fatalf("mode 0400: %v", err)
	}
}
