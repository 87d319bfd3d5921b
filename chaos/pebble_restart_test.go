package chaos

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/certfleet/certfleet/testenv"
)

// A Pebble restarted from scratch (make bench does it first, so it measures
// against a fresh, fast Pebble) serves a new issuing root, and the file
// Settings.PebbleRoot names holds that root.
func TestPebbleRestart(t *testing.T) {
	sizeFor(t) // skips unless the chaos scenarios run: it restarts a shared service
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, err := os.ReadFile(s.PebbleRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := testenv.Restart(ctx, testenv.ServicePebble, testenv.RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(s.PebbleRoot)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, after) {
		t.Fatal("Pebble's root file did not change: Pebble was not restarted from scratch")
	}
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.PebbleManagementURL+"/roots/0", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("Pebble after the restart (through the CA file): %v", err)
	}
	defer resp.Body.Close()
	served, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reading Pebble's root: %d, %v", resp.StatusCode, err)
	}
	if !bytes.Equal(bytes.TrimSpace(served), bytes.TrimSpace(after)) {
		t.Fatal("the saved root is not the root Pebble serves")
	}
}
