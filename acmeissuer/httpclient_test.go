package acmeissuer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewHTTPClient(t *testing.T) {
	if c, err := NewHTTPClient("", 5*time.Second); err != nil || c.Timeout != 5*time.Second {
		t.Fatalf("no extra root: %v, %v", c, err)
	}
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o600)
	if _, err := NewHTTPClient(junk, time.Second); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("junk root: %v", err)
	}
	if _, err := NewHTTPClient(filepath.Join(dir, "missing.pem"), time.Second); err == nil {
		t.Fatal("missing root file accepted")
	}
}
