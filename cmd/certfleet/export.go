package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/certfleet/certfleet/audit"
	"github.com/certfleet/certfleet/certstore"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/seal"
)

// export writes the newest certificate of a SAN set, with its private key
// unsealed, to files for an operator who holds both database access and the
// key-encryption keyring. The key goes to a 0600 file, never to stdout.
func export(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("export", "--san NAME [--san NAME ...] [flags]",
		"Writes the newest stored certificate of the SAN set and its unsealed private key\n(mode 0600) to --out. Needs the keyring the workers seal with.", stdout, stderr, false)
	var sans listFlag
	a.fs.Var(&sans, "san", "a DNS name of the certificate's SAN set; repeat for every name (required)")
	dir := a.fs.String("out", ".", "directory for <identity>.chain.pem and <identity>.key.pem")
	keysFile := a.fs.String("seal-keys-file", os.Getenv("CERTFLEET_SEAL_KEYS_FILE"), "keyring file (env CERTFLEET_SEAL_KEYS_FILE); else env CERTFLEET_SEAL_KEYS")
	if _, err := a.parse(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	canon, err := normalizeAll(sans)
	if err == nil {
		err = names.ValidateList(canon, events.MaxSANs)
	}
	if err != nil {
		return fmt.Errorf("%w: export: --san: %v", errUsage, err)
	}
	var kr *seal.Keyring
	if *keysFile != "" {
		kr, err = seal.LoadKeyringFile(*keysFile)
	} else {
		kr, err = seal.LoadKeyringEnv(seal.EnvKeyring)
	}
	if err != nil {
		return fmt.Errorf("%w: export: %v (pass --seal-keys-file or set CERTFLEET_SEAL_KEYS)", errUsage, err)
	}
	d, ctx, done, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	identity := events.Identity(canon)
	c, err := certstore.New(d).Latest(ctx, identity)
	if err != nil {
		return fmt.Errorf("export: %w (is the SAN set managed and issued? list every name with --san)", err)
	}
	if len(c.SealedKey) == 0 {
		return fmt.Errorf("export: the key of serial %s (expired %s) was destroyed by the retention job after its grace; nothing to export", c.Serial, fmtTime(c.NotAfter))
	}
	key, err := seal.OpenPrivateKey(ctx, kr, c.SealedKey, seal.AAD(seal.PurposeCertKey, c.Identity, c.RequestID))
	if err != nil {
		return fmt.Errorf("export: opening the sealed key: %w (is this the keyring the workers use?)", err)
	}
	// Recorded before the key leaves the database's care: no record, no export.
	if err := recordAudit(ctx, d, audit.Event{Action: audit.KeyExport, Subject: identity, Tenant: c.Tenant, SANs: canon,
		CA: c.Issuer, Serial: c.Serial, Detail: map[string]string{"request_id": c.RequestID, "out": *dir}}); err != nil {
		return fmt.Errorf("export: nothing exported: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("export: encoding the key: %w", err)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	chainPath := filepath.Join(*dir, identity[:16]+".chain.pem")
	keyPath := filepath.Join(*dir, identity[:16]+".key.pem")
	if err := os.WriteFile(chainPath, []byte(c.ChainPEM), 0o644); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(stdout, "exported serial %s (not after %s)\n  chain: %s\n  key:   %s (mode 0600)\n", c.Serial, fmtTime(c.NotAfter), chainPath, keyPath)
	return nil
}
