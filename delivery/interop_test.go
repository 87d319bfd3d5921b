package delivery

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pythonHPKE is the PyPI package the interop test opens deliveries with:
// an RFC 9180 implementation over pyca/cryptography that nobody here wrote.
const pythonHPKE = "hpke==0.3.2"

// pythonWithHPKE returns a python3 command line that can import hpke,
// installing it on first use into a venv in the cache (CERTFLEET_CACHE_DIR,
// default ~/.cache/certfleet), or with pip --target where venv is missing.
// CI starts on a clean machine with python3 and pip: the test installs what
// it needs itself.
func pythonWithHPKE(t *testing.T) (python string, env []string) {
	t.Helper()
	if os.Getenv("CERTFLEET_TESTENV") == "off" {
		t.Skip("CERTFLEET_TESTENV=off: the interop test installs a Python package from PyPI")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is not on PATH: the interop test opens a delivery with Python's hpke package")
	}
	cache := os.Getenv("CERTFLEET_CACHE_DIR")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "certfleet")
	}
	dir := filepath.Join(cache, "python-"+strings.ReplaceAll(pythonHPKE, "==", "-"))
	venvPy := filepath.Join(dir, "venv", "bin", "python")
	target := filepath.Join(dir, "site")
	ready := func() (string, []string, bool) {
		if _, err := os.Stat(filepath.Join(dir, "complete-venv")); err == nil {
			return venvPy, nil, true
		}
		if _, err := os.Stat(filepath.Join(dir, "complete-target")); err == nil {
			return py, []string{"PYTHONPATH=" + target}, true
		}
		return "", nil, false
	}
	if p, e, ok := ready(); ok {
		return p, e
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), "PIP_DISABLE_PIP_VERSION_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("installing %s from PyPI into %s", pythonHPKE, dir)
	venvErr := run(py, "-m", "venv", "--clear", filepath.Join(dir, "venv"))
	if venvErr == nil {
		venvErr = run(venvPy, "-m", "pip", "install", "-q", pythonHPKE)
	}
	if venvErr == nil {
		if err := os.WriteFile(filepath.Join(dir, "complete-venv"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return venvPy, nil
	}
	// No venv module (Debian without python3-venv): install beside the
	// system's packages, into a directory of our own.
	os.Setenv("PIP_BREAK_SYSTEM_PACKAGES", "1")
	defer os.Unsetenv("PIP_BREAK_SYSTEM_PACKAGES")
	if err := run(py, "-m", "pip", "install", "-q", "--upgrade", "--target", target, pythonHPKE); err != nil {
		t.Fatalf("cannot install %s: with venv: %v; with pip --target: %v", pythonHPKE, venvErr, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "complete-target"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return py, []string{"PYTHONPATH=" + target}
}

// A delivery opens outside Go: the documented recipe
// (interop/open_delivery.py, Python's hpke package) opens a record this
// package encoded, with the recipient's key file as keygen writes it, and
// gives back the certificate's key; another recipient's key does not open
// it.
func TestPythonOpensADelivery(t *testing.T) {
	python, env := pythonWithHPKE(t)
	dir := t.TempDir()
	k, other := mustKey(t), mustKey(t)
	c := testCertificate(t, "acme", 24*time.Hour, "a.example.com", "www.a.example.com")
	r, err := Seal("edge", k.Public(), c, ReasonIssued)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Encode(r, Source, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rec := write("record.json", m.Value)
	pemOf := func(k *PrivateKey) []byte {
		b, err := MarshalPrivateKeyPEM(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	open := func(keyFile string) ([]byte, error) {
		cmd := exec.Command(python, "interop/open_delivery.py", keyFile, rec)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	out, err := open(write("edge.key", pemOf(k)))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(out)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("python printed %q, not a PKCS#8 key", out)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := x509.MarshalPKCS8PrivateKey(c.Key)
	if !bytes.Equal(block.Bytes, want) || !publicKeysEqual(c.Key.Public(), key.(crypto.Signer).Public()) {
		t.Fatal("python opened another key")
	}
	_, err = open(write("other.key", pemOf(other)))
	if err == nil || !strings.Contains(err.Error(), "InvalidTag") {
		t.Fatalf("another recipient's key: %v, want InvalidTag", err)
	}
}
