package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/scheduler"
)

// The inventory commands: manage, unmanage and import. They write
// managed_certificates through package scheduler; the scheduler picks new
// rows up on its next tick.

// listFlag is a repeatable string flag (--san a --san b, or --san a,b).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// specFlags are the flags that describe how a certificate is issued.
type specFlags struct {
	tenant, ca, profile, keyType *string
}

func addSpecFlags(a *adminFlags) specFlags {
	defCA := os.Getenv("CERTFLEET_ACME_DIRECTORY")
	if defCA == "" {
		defCA = ratelimit.LetsEncryptDirectory
	}
	return specFlags{
		tenant:  a.fs.String("tenant", scheduler.DefaultTenant, "tenant the certificate belongs to"),
		ca:      a.fs.String("ca", defCA, "CA name or https ACME directory URL (env CERTFLEET_ACME_DIRECTORY, else Let's Encrypt)"),
		profile: a.fs.String("profile", "", "ACME profile (empty: the CA's default)"),
		keyType: a.fs.String("key-type", string(events.KeyECDSAP256), "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096"),
	}
}

func (s specFlags) spec(sans []string) scheduler.Spec {
	return scheduler.Spec{SANs: sans, Tenant: *s.tenant, CA: *s.ca, Profile: *s.profile, KeyType: events.KeyType(*s.keyType)}
}

// specError turns a Normalize error into a usage error naming the flag.
func specError(cmd string, err error) error {
	msg := err.Error()
	for field, flag := range map[string]string{"tenant": "--tenant", "ca": "--ca", "profile": "--profile", "key_type": "--key-type"} {
		if strings.Contains(msg, ": "+field+": ") {
			return fmt.Errorf("%w: %s: invalid %s: %v", errUsage, cmd, flag, err)
		}
	}
	return fmt.Errorf("%w: %s: %v", errUsage, cmd, err)
}

func manage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("manage", "--san NAME [--san NAME ...] [flags]", "Keeps the SAN set's certificate valid from now on (idempotent); the scheduler\nemits its first issuance on its next tick.", stdout, stderr, false)
	var sans listFlag
	a.fs.Var(&sans, "san", "DNS name to put in the certificate (repeat, or comma separated); required")
	sf := addSpecFlags(a)
	if _, err := a.parse(args, 0, 0, "no arguments (give names with --san)"); err != nil {
		return err
	}
	if len(sans) == 0 {
		return fmt.Errorf("%w: manage: give at least one --san", errUsage)
	}
	m, err := scheduler.Normalize(sf.spec(sans))
	if err != nil {
		return specError("manage", err)
	}
	d, ctx, done, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	res, err := scheduler.NewInventory(d, nil).Manage(ctx, m)
	if err != nil {
		return explainInventory("manage", err)
	}
	if res.Added == 1 {
		fmt.Fprintf(stdout, "managed %s (%s), tenant %s: due now\n", m.Identity, strings.Join(m.SANs, ","), m.Tenant)
	} else {
		fmt.Fprintf(stdout, "already managed %s (%s): unchanged\n", m.Identity, strings.Join(m.SANs, ","))
	}
	return nil
}

var identityPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

func unmanage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("unmanage", "(--san NAME ... | --identity ID ...) [flags]", "Stops managing a certificate; issued certificates stay stored.", stdout, stderr, false)
	var sans, ids listFlag
	a.fs.Var(&sans, "san", "the SAN set to stop managing (repeat, or comma separated)")
	a.fs.Var(&ids, "identity", "identity (64 hex digits, as printed by manage) to stop managing (repeatable)")
	if _, err := a.parse(args, 0, 0, "no arguments (give --san or --identity)"); err != nil {
		return err
	}
	if len(sans) == 0 && len(ids) == 0 {
		return fmt.Errorf("%w: unmanage: give the SAN set with --san, or --identity", errUsage)
	}
	for _, id := range ids {
		if !identityPattern.MatchString(id) {
			return fmt.Errorf("%w: unmanage: invalid --identity %q: want 64 lower-case hex digits", errUsage, id)
		}
	}
	if len(sans) > 0 {
		m, err := scheduler.Normalize(scheduler.Spec{SANs: sans, CA: "x"})
		if err != nil {
			return specError("unmanage", err)
		}
		ids = append(ids, m.Identity)
	}
	d, ctx, done, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	n, err := scheduler.NewInventory(d, nil).Unmanage(ctx, ids...)
	if err != nil {
		return explainInventory("unmanage", err)
	}
	fmt.Fprintf(stdout, "unmanaged %d of %d (issued certificates stay stored)\n", n, len(ids))
	return nil
}

func importCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("import", "[flags] FILE", `FILE (or - for standard input) holds one SAN set per line, names separated by
spaces or commas; blank lines and lines starting with # are ignored. Every
line gets the --tenant, --ca, --profile and --key-type given here. All lines
are validated before anything is written; SAN sets already managed are left
unchanged, so an import can be re-run.`, stdout, stderr, false)
	sf := addSpecFlags(a)
	pos, err := a.parse(args, 1, 1, "one FILE (or - for standard input)")
	if err != nil {
		return err
	}
	if _, err := scheduler.Normalize(sf.spec([]string{"example.com"})); err != nil {
		return specError("import", err)
	}
	var r io.Reader = os.Stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("%w: import: %v", errUsage, err)
		}
		defer f.Close()
		r = f
	}
	d, ctx, done, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	res, err := scheduler.NewInventory(d, nil).Import(ctx, r, sf.spec(nil))
	if err != nil {
		if errors.Is(err, scheduler.ErrInvalidSpec) {
			return fmt.Errorf("%w: import %s: %v (nothing was imported)", errUsage, pos[0], err)
		}
		return explainInventory("import", err)
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "read %d SAN sets: %d added (due now), %d already managed (unchanged) in %v (%.0f rows/s)\n",
		res.Lines, res.Added, res.Already, el.Round(time.Millisecond), float64(res.Lines)/max(el.Seconds(), 1e-9))
	return nil
}

func explainInventory(cmd string, err error) error {
	if strings.Contains(err.Error(), "42P01") || strings.Contains(err.Error(), "42703") {
		return fmt.Errorf("%s: the scheduler's tables or columns are missing (%v): run 'certfleet migrate' against this database first", cmd, err)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}
