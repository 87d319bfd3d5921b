package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/ratelimit"
)

// A limits file must be about the CAs the worker orders from: one naming a
// directory no -ca entry uses is refused, naming it; a -ca CA the file does
// not list gets Let's Encrypt's limits under its -ca name.
func TestCatalogueOfTheConfiguredCAs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(file, []byte(`{"cas":[{"id":"local","directory":"https://127.0.0.1:14000/dir",
		"limits":{"NewOrdersPerAccount":{"count":20,"period":"1h"}}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config{LimitsFile: file, CAs: []caconfig.CA{{Name: "pebble", Directory: "https://127.0.0.1:14000/dir/"}}}
	if _, err := catalogue(cfg); err == nil || !strings.Contains(err.Error(), `"https://127.0.0.1:14000/dir"`) || !strings.HasPrefix(err.Error(), "-limits: ") {
		t.Fatalf("a file CA no -ca uses: err = %v; want it refused, naming the directory", err)
	}
	cfg.CAs = append(cfg.CAs, caconfig.CA{Name: "pebble2", Directory: "https://127.0.0.1:14000/dir"})
	cat, err := catalogue(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ca, ok := cat.CA("https://127.0.0.1:14000/dir/"); !ok || ca.ID != "pebble" {
		t.Errorf("the -ca CA the file does not list: %+v, %v", ca, ok)
	}
	if l, ok := cat.Default("https://127.0.0.1:14000/dir", ratelimit.FleetOrdersPerSecond); !ok || l.Count != 10 {
		t.Errorf("the file's CA keeps Let's Encrypt's fleet budget: %v, %v", l, ok)
	}
}
