package seal

import (
	"bytes"
	"testing"
)

// Open never panics on hostile blobs, and whatever it accepts is exactly what
// was sealed (an authentic blob; nothing forged opens).
func FuzzOpen(f *testing.F) {
	k, err := NewKeyring("a", map[string][]byte{"a": key(1), "bb": key(2)})
	if err != nil {
		f.Fatal(err)
	}
	aad := AAD(PurposeCertKey, "row")
	good, _ := k.Seal(ctx, []byte("plaintext"), aad)
	f.Add(good, []byte("row"))
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1}, []byte("row"))
	f.Add([]byte{1, 255}, []byte("row"))
	f.Add(append([]byte{1, 2, 'b', 'b'}, make([]byte, 40)...), []byte("row"))
	f.Add(append([]byte{1, 64}, bytes.Repeat([]byte{'a'}, 100)...), []byte(""))
	f.Fuzz(func(t *testing.T, blob, row []byte) {
		plain, err := k.Open(ctx, blob, AAD(PurposeCertKey, string(row)))
		// Only "plaintext" under row "row" was ever sealed with these keys (in
		// any fuzz worker process), so nothing else may open.
		if err == nil && (string(row) != "row" || string(plain) != "plaintext") {
			t.Fatalf("forged blob opened: %x", blob)
		}
		_, _ = KeyID(blob)
	})
}
