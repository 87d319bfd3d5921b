package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/mholt/acmez/v3/acme"
)

// The second Pebble: the same patched build, its own ports, and a policy
// that every newAccount carries an External Account Binding (RFC 8555
// §7.3.4) with the one key id and MAC key testenv made for it, as ZeroSSL,
// Google Trust Services and other commercial CAs require. It validates
// challenges the way the first one does (same DNS server and HTTP-01 port),
// serves HTTPS with the same certificate (Settings.ACMETLSCA) and offers the
// same profiles.
const (
	// PebbleEABKeyID is the key id the EAB Pebble knows (Settings.EABKeyID).
	PebbleEABKeyID = "certfleet-testenv"
	eabProcName    = "pebble-eab"
)

var (
	pebbleEABAddr     = addr(14010)
	pebbleEABMgmtAddr = addr(15010)
	// servingCertsMu: both Pebbles start in parallel and share one serving
	// certificate, made by the first that needs it.
	servingCertsMu sync.Mutex
)

// eabKeyFile is where the EAB Pebble's MAC key lives: the stack's secrets
// directory, mode 0600, base64url as a CA hands it out.
func eabKeyFile(state string) string { return filepath.Join(pkiAt(state).secrets, eabProcName+".mac") }

// ensureEABKey returns the EAB Pebble's MAC key, making it (32 random bytes)
// once per state directory, so a restarted Pebble knows the key accounts
// were bound with.
func ensureEABKey(state string) (string, error) {
	path := eabKeyFile(state)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("testenv: reading the EAB MAC key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	key := base64.RawURLEncoding.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("testenv: writing the EAB MAC key: %w", err)
	}
	return key, nil
}

// pebbleEABProc is the EAB Pebble's process: pebble's marker (its build) and
// fingerprint (its resolver), its own pid file.
func (l layout) pebbleEABProc() proc {
	p, _ := pebbleProcs(l.state, pebbleBuildDir(l.cache, true))
	p.name = eabProcName
	return p
}

// pebbleEABService is the EAB Pebble: same build and serving certificate as
// pebble (whose directory, pebbleDir, holds them), its own config and pid.
func (l layout) pebbleEABService(bin func() string, install func(context.Context) error, pebbleDir, pebbleCA string) *service {
	dir := filepath.Join(l.state, eabProcName)
	p := l.pebbleEABProc()
	return &service{
		proc: p, ports: []string{pebbleEABAddr, pebbleEABMgmtAddr},
		install: install,
		start: func(context.Context) error {
			mac, err := ensureEABKey(l.state)
			if err != nil {
				return err
			}
			return startPebble(p, bin(), pebbleDir, dir, pebbleEABAddr, pebbleEABMgmtAddr, map[string]string{PebbleEABKeyID: mac})
		},
		ready: func(ctx context.Context) error {
			mac, err := ensureEABKey(l.state)
			if err != nil {
				return err
			}
			return pebbleAnswersPOSTWith(ctx, "https://"+pebbleEABAddr+"/dir", pebbleCA, &acme.EAB{KeyID: PebbleEABKeyID, MACKey: mac})
		},
	}
}

// EAB returns the EAB Pebble's binding (key id and MAC key, read from
// Settings.EABKeyFile), or an error saying the stack predates it.
func (s Settings) EAB() (acme.EAB, error) {
	if s.EABACMEDirectory == "" || s.EABKeyFile == "" {
		return acme.EAB{}, errors.New("testenv: the stack has no EAB Pebble (its env file predates it): run `go run ./cmd/testenv up`")
	}
	b, err := os.ReadFile(s.EABKeyFile)
	if err != nil {
		return acme.EAB{}, fmt.Errorf("testenv: reading the EAB MAC key: %w", err)
	}
	return acme.EAB{KeyID: s.EABKeyID, MACKey: strings.TrimSpace(string(b))}, nil
}

// startPebble starts a Pebble of the build in bin as p, its config in dir,
// serving on listen and mgmt with the serving certificate kept in certDir
// (made there once; both Pebbles share it), requiring External Account
// Binding when eabKeys is set (see writePebbleConfigAt).
func startPebble(p proc, bin, certDir, dir, listen, mgmt string, eabKeys map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_, cert, key, err := writeServingCerts(certDir)
	if err != nil {
		return err
	}
	conf, err := writePebbleConfigAt(dir, cert, key, listen, mgmt, eabKeys)
	if err != nil {
		return err
	}
	return p.start(pebbleCmd(bin, conf))
}
