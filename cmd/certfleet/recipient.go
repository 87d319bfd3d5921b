package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
)

const recipientUsage = `usage: certfleet recipient <command> [flags]

Recipients receive the private keys of the certificates they match, sealed
to their public key (HPKE) on the delivery topic, by issuer-workers running
with -deliver-keys; 'certfleet agent' on the recipient's side opens them.

commands:
  keygen   make a recipient key pair (run it where the keys are used: the
           private key never leaves that machine)
  add      register a recipient: NAME, its public key, and the tenants and/or
           SAN patterns of the certificates it receives
  list     list the recipients
  rotate   replace a recipient's public key (the current certificates are
           delivered to the new key)
  remove   remove a recipient: nothing delivered after this reaches it
  history  a recipient's changes (also after remove)

Every change is audited with its --actor.
`

func recipient(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, recipientUsage)
		return fmt.Errorf("%w: recipient: missing command (keygen, add, list, rotate, remove, history)", errUsage)
	}
	switch args[0] {
	case "keygen":
		return recipientKeygen(args[1:], stdout, stderr)
	case "add":
		return recipientAdd(ctx, args[1:], stdout, stderr)
	case "list":
		return recipientList(ctx, args[1:], stdout, stderr)
	case "rotate":
		return recipientRotate(ctx, args[1:], stdout, stderr)
	case "remove":
		return recipientRemove(ctx, args[1:], stdout, stderr)
	case "history":
		return recipientHistory(ctx, args[1:], stdout, stderr)
	}
	if isHelp(args[0]) {
		fmt.Fprint(stdout, recipientUsage)
		return nil
	}
	fmt.Fprint(stderr, recipientUsage)
	return fmt.Errorf("%w: recipient: unknown command %q", errUsage, args[0])
}

const keygenAbout = `Writes a new recipient key pair: the private key (PKCS#8 PEM, P-256, mode
0600) for 'certfleet agent --recipient-key', and the public key (PEM) for
'certfleet recipient add --public-key'. Neither file is overwritten.`

func recipientKeygen(args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient keygen"
	fs := newFlagSet(cmd, "--key FILE --public-key FILE", keygenAbout)
	keyFile := fs.String("key", "", "where to write the private key (mode 0600; required)")
	pubFile := fs.String("public-key", "", "where to write the public key (required)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, cmd, fs.Arg(0))
	}
	if *keyFile == "" || *pubFile == "" {
		return fmt.Errorf("%w: %s: --key and --public-key are required", errUsage, cmd)
	}
	k, err := delivery.GenerateKey()
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	priv, err := delivery.MarshalPrivateKeyPEM(k)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	defer clear(priv)
	pub, err := delivery.MarshalPublicKeyPEM(k.Public())
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if err := writeNew(*keyFile, priv, 0o600); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if err := writeNew(*pubFile, pub, 0o644); err != nil {
		os.Remove(*keyFile)
		return fmt.Errorf("%s: %w", cmd, err)
	}
	fmt.Fprintf(stdout, "recipient key %s\n  private key: %s (mode 0600: keep it where the certificates are used)\n  public key:  %s (for 'certfleet recipient add --public-key')\n",
		k.Public().KeyID(), *keyFile, *pubFile)
	return nil
}

// writeNew creates path with mode; an existing file is an error.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readPublicKey reads a --public-key file.
func readPublicKey(cmd, path string) (delivery.PublicKey, error) {
	if path == "" {
		return delivery.PublicKey{}, fmt.Errorf("%w: %s: --public-key is required: the recipient's public key ('certfleet recipient keygen' writes it)", errUsage, cmd)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return delivery.PublicKey{}, fmt.Errorf("%w: %s: --public-key: %v", errUsage, cmd, err)
	}
	k, err := delivery.ParsePublicKeyPEM(b)
	if err != nil {
		return delivery.PublicKey{}, fmt.Errorf("%w: %s: --public-key %s: %v", errUsage, cmd, path, err)
	}
	return k, nil
}

// openRecipients opens the database of f's flags and the recipient store
// over it; the context carries --timeout.
func openRecipients(ctx context.Context, f *adminFlags) (*delivery.Store, context.Context, context.CancelFunc, error) {
	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	return delivery.NewStore(d), ctx, done, nil
}

// explainRecipient turns a delivery error into one that says what to do.
func explainRecipient(cmd string, err error) error {
	var fe *delivery.FieldError
	switch {
	case errors.As(err, &fe):
		fl := map[string]string{"name": "NAME", "public_key": "--public-key", "tenants": "--tenants", "sans_patterns": "--sans-pattern",
			"scope": "--tenants/--sans-pattern", "actor": "--actor"}[fe.Field]
		return fmt.Errorf("%w: %s: %s: %v", errUsage, cmd, fl, fe.Err)
	case errors.Is(err, delivery.ErrExists):
		return fmt.Errorf("%s: %w: pick another name, or 'certfleet recipient rotate' to change its key", cmd, err)
	case errors.Is(err, delivery.ErrNotFound):
		return fmt.Errorf("%s: %w; 'certfleet recipient list' shows them", cmd, err)
	}
	return explain(cmd, err)
}

const addAbout = `Registers a recipient. It receives every certificate whose tenant is one of
--tenants (if given) and whose every SAN matches one of --sans-pattern (if
given): a DNS name, or *.DOMAIN for DOMAIN and every name below it. At least
one of the two is required. The workers (-deliver-keys) deliver the current
certificates it matches within seconds, and each new one as it is obtained.
Only the public key is stored.`

func recipientAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient add"
	f := newAdminFlags(cmd, "NAME --public-key FILE (--tenants T,... | --sans-pattern P ...) [flags]", addAbout, stdout, stderr, false)
	pubFile := f.fs.String("public-key", "", "the recipient's public key file, from 'certfleet recipient keygen' (required)")
	var tenants, patterns listFlag
	f.fs.Var(&tenants, "tenants", "tenants whose certificates it receives; comma-separate or repeat")
	f.fs.Var(&patterns, "sans-pattern", "a name or *.DOMAIN every SAN of a certificate it receives must match one of; comma-separate or repeat")
	actor := f.fs.String("actor", defaultActor(), "who makes the change ("+actorDefaultHelp+")")
	pos, err := f.parse(args, 1, 1, "one recipient NAME")
	if err != nil {
		return err
	}
	key, err := readPublicKey(cmd, *pubFile)
	if err != nil {
		return err
	}
	r := delivery.Recipient{Name: pos[0], Key: key, Tenants: tenants, SANsPatterns: lowerAll(patterns)}
	if err := r.Check(); err != nil {
		return explainRecipient(cmd, err)
	}
	store, ctx, done, err := openRecipients(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	r, err = store.Add(ctx, r, *actor)
	if err != nil {
		return explainRecipient(cmd, err)
	}
	fmt.Fprintf(stdout, "added recipient %s (key %s, version %d)\n  %s\n  the workers deliver its current certificates now, and each new one as it is obtained\n",
		r.Name, r.Key.KeyID()[:16], r.Version, scope(r))
	return nil
}

func lowerAll(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = strings.ToLower(v)
	}
	return out
}

func scope(r delivery.Recipient) string {
	var parts []string
	if len(r.Tenants) > 0 {
		parts = append(parts, "tenants "+strings.Join(r.Tenants, ","))
	}
	if len(r.SANsPatterns) > 0 {
		parts = append(parts, "every SAN matching "+strings.Join(r.SANsPatterns, ","))
	}
	return "receives certificates of " + strings.Join(parts, " with ")
}

type recipientJSON struct {
	Name            string    `json:"name"`
	KeyID           string    `json:"key_id"`
	Tenants         []string  `json:"tenants"`
	SANsPatterns    []string  `json:"sans_patterns"`
	Version         int64     `json:"version"`
	CreatedBy       string    `json:"created_by"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	BackfillPending bool      `json:"backfill_pending"`
	BackfilledAt    time.Time `json:"backfilled_at,omitzero"`
}

func recipientList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient list"
	f := newAdminFlags(cmd, "[flags]", "Lists the recipients and what they receive.", stdout, stderr, true)
	if _, err := f.parse(args, 0, 0, "only flags"); err != nil {
		return err
	}
	store, ctx, done, err := openRecipients(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	rs, err := store.List(ctx)
	if err != nil {
		return explainRecipient(cmd, err)
	}
	if *f.json {
		out := make([]recipientJSON, 0, len(rs))
		for _, r := range rs {
			out = append(out, recipientJSON{Name: r.Name, KeyID: r.Key.KeyID(), Tenants: r.Tenants, SANsPatterns: r.SANsPatterns, Version: r.Version,
				CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), BackfillPending: r.BackfillPending, BackfilledAt: r.BackfilledAt.UTC()})
		}
		return writeJSON(stdout, out)
	}
	if len(rs) == 0 {
		fmt.Fprintln(stdout, "no recipients")
		return nil
	}
	rows := [][]string{{"NAME", "KEY", "VERSION", "TENANTS", "SAN PATTERNS", "CURRENT CERTIFICATES", "UPDATED"}}
	for _, r := range rs {
		backfill := "delivered " + fmtTime(r.BackfilledAt)
		if r.BackfillPending {
			backfill = "being delivered"
		}
		rows = append(rows, []string{r.Name, r.Key.KeyID()[:16], fmt.Sprint(r.Version), orDash(strings.Join(r.Tenants, ",")),
			orDash(strings.Join(r.SANsPatterns, ",")), backfill, fmtTime(r.UpdatedAt)})
	}
	return table(stdout, rows...)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return events.Sanitize(s, 200)
}

func recipientRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient rotate"
	f := newAdminFlags(cmd, "NAME --public-key FILE [flags]",
		"Replaces a recipient's public key. The current certificates are delivered to the\nnew key; deliveries made before stay sealed to the old one.", stdout, stderr, false)
	pubFile := f.fs.String("public-key", "", "the new public key file (required)")
	actor := f.fs.String("actor", defaultActor(), "who makes the change ("+actorDefaultHelp+")")
	pos, err := f.parse(args, 1, 1, "one recipient NAME")
	if err != nil {
		return err
	}
	key, err := readPublicKey(cmd, *pubFile)
	if err != nil {
		return err
	}
	store, ctx, done, err := openRecipients(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	r, err := store.Rotate(ctx, pos[0], key, *actor)
	if err != nil {
		return explainRecipient(cmd, err)
	}
	fmt.Fprintf(stdout, "rotated recipient %s to key %s (version %d); the current certificates are delivered to it now\n", r.Name, r.Key.KeyID()[:16], r.Version)
	return nil
}

func recipientRemove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient remove"
	f := newAdminFlags(cmd, "NAME [flags]",
		"Removes a recipient: no delivery made from now on is sealed to its key. Deliveries\nalready published stay on the topic (sealed to its key) until they expire.", stdout, stderr, false)
	actor := f.fs.String("actor", defaultActor(), "who makes the change ("+actorDefaultHelp+")")
	pos, err := f.parse(args, 1, 1, "one recipient NAME")
	if err != nil {
		return err
	}
	store, ctx, done, err := openRecipients(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	r, err := store.Remove(ctx, pos[0], *actor)
	if err != nil {
		return explainRecipient(cmd, err)
	}
	fmt.Fprintf(stdout, "removed recipient %s (key %s); nothing new is delivered to it\n", r.Name, r.Key.KeyID()[:16])
	return nil
}

func recipientHistory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "recipient history"
	f := newAdminFlags(cmd, "NAME [flags]", "Lists a recipient's changes, oldest first (kept after remove).", stdout, stderr, true)
	pos, err := f.parse(args, 1, 1, "one recipient NAME")
	if err != nil {
		return err
	}
	store, ctx, done, err := openRecipients(ctx, f)
	if err != nil {
		return err
	}
	defer done()
	h, err := store.History(ctx, pos[0])
	if err != nil {
		return explainRecipient(cmd, err)
	}
	if *f.json {
		return writeJSON(stdout, h)
	}
	if len(h) == 0 {
		return fmt.Errorf("%s: %w: %s (never added)", cmd, delivery.ErrNotFound, pos[0])
	}
	rows := [][]string{{"AT", "ACTION", "BY", "VERSION", "KEY", "TENANTS", "SAN PATTERNS"}}
	for _, e := range h {
		rows = append(rows, []string{fmtTime(e.At), e.Action, events.Sanitize(e.Actor, 130), fmt.Sprint(e.Version), e.KeyID[:16],
			orDash(strings.Join(e.Tenants, ",")), orDash(strings.Join(e.SANsPatterns, ","))})
	}
	return table(stdout, rows...)
}
