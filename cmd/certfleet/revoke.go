package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/incident"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/seal"
)

// selectionFlags choose certificates from the inventory (incident.Selector).
type selectionFlags struct {
	serials      listFlag
	serialsFile  *string
	sans         listFlag
	tenant, ca   *string
	before, from *string
	max          *int
}

func addSelectionFlags(fs *flag.FlagSet, defaultMax int) *selectionFlags {
	s := &selectionFlags{}
	fs.Var(&s.serials, "serial", "a certificate's serial (hex, as cert_obtained carries it); repeat or comma-separate")
	s.serialsFile = fs.String("serials", "", "file of serials, one per line (# comments and blank lines skipped)")
	fs.Var(&s.sans, "san", "a DNS name of the SAN set to select; repeat for every name of the set")
	s.tenant = fs.String("tenant", "", "only this tenant's certificates")
	s.ca = fs.String("ca", "", "only certificates issued by this CA (the name in their cert_obtained)")
	s.before = fs.String("issued-before", "", "only certificates issued (notBefore) before this time: RFC 3339, or -DURATION from now (-2h, -7d)")
	s.from = fs.String("issued-after", "", "only certificates issued at or after this time")
	s.max = fs.Int("max", defaultMax, "refuse a selection larger than this (raise it on purpose)")
	return s
}

// selector reads the selection flags; an error is a usage error.
func (s *selectionFlags) selector(cmd string, now time.Time) (incident.Selector, error) {
	sel := incident.Selector{Serials: s.serials, Tenant: *s.tenant, CA: *s.ca}
	if *s.serialsFile != "" {
		more, err := readSerials(*s.serialsFile)
		if err != nil {
			return sel, fmt.Errorf("%w: %s: --serials: %v", errUsage, cmd, err)
		}
		sel.Serials = append(sel.Serials, more...)
	}
	for i, v := range sel.Serials {
		v = strings.TrimLeft(strings.ToLower(strings.ReplaceAll(v, ":", "")), "0")
		if v == "" || strings.Trim(v, "0123456789abcdef") != "" {
			return sel, fmt.Errorf("%w: %s: serial %q is not hexadecimal", errUsage, cmd, sel.Serials[i])
		}
		sel.Serials[i] = v
	}
	if len(s.sans) > 0 {
		canon, err := normalizeAll(s.sans)
		if err != nil {
			return sel, fmt.Errorf("%w: %s: --san: %v", errUsage, cmd, err)
		}
		sel.SANs = canon
	}
	var err error
	for _, f := range []struct {
		name string
		v    string
		t    *time.Time
	}{{"--issued-before", *s.before, &sel.IssuedBefore}, {"--issued-after", *s.from, &sel.IssuedAfter}} {
		if f.v != "" {
			if *f.t, err = parseTime(f.v, now); err != nil {
				return sel, fmt.Errorf("%w: %s: %s: %v", errUsage, cmd, f.name, err)
			}
		}
	}
	if sel.Empty() {
		return sel, fmt.Errorf("%w: %s: select the certificates: --serial, --serials FILE, --san, --tenant, --ca, --issued-before or --issued-after", errUsage, cmd)
	}
	return sel, nil
}

// parseIncident parses the flags of revoke and reissue (fs, with kf's
// Kafka flags) and reads the selection; now is the time it is relative to.
func parseIncident(cmd string, fs *flag.FlagSet, kf *kafkaFlags, sf *selectionFlags, args []string, stdout, stderr io.Writer) (incident.Selector, time.Time, error) {
	if err := parseEnvFlags(fs, kf.env, args, stdout, stderr); err != nil {
		return incident.Selector{}, time.Time{}, err
	}
	if fs.NArg() > 0 {
		return incident.Selector{}, time.Time{}, fmt.Errorf("%w: %s: unexpected argument %q", errUsage, cmd, fs.Arg(0))
	}
	now := time.Now()
	sel, err := sf.selector(cmd, now)
	return sel, now, err
}

// producer is a producer on conn's brokers and kf's topics whose transport
// knows exactly the topics it writes.
func (k *kafkaFlags) producer(conn *kafkaconn.Connector, writes ...string) (*events.Producer, error) {
	return events.NewProducer(events.ProducerConfig{Brokers: conn.Brokers(), Topics: k.topics,
		Transport: conn.Transport(writes...), WriteTimeout: conn.Timeout()})
}

func readSerials(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

// caFlags are the CAs the command may talk to: the workers' -ca list.
type caFlags struct {
	list, tlsCA *string
}

func addCAFlags(fs *flag.FlagSet) *caFlags {
	return &caFlags{
		list:  fs.String("cas", os.Getenv("CERTFLEET_CAS"), "the CAs, as the workers' -ca: NAME=DIRECTORY_URL,... (env CERTFLEET_CAS)"),
		tlsCA: fs.String("acme-tls-ca", os.Getenv("CERTFLEET_ACME_TLS_CA"), "extra PEM root trusted for the CAs' HTTPS, e.g. Pebble's (env CERTFLEET_ACME_TLS_CA)"),
	}
}

func (c *caFlags) parse(cmd string) ([]caconfig.CA, error) {
	cas, err := caconfig.Parse(*c.list)
	if err == nil {
		err = caconfig.CheckAll(cas)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: --cas: %v", errUsage, cmd, err)
	}
	return cas, nil
}

// openAndSelect opens the database and selects the certificates, refusing
// more than max.
func openAndSelect(ctx context.Context, cmd, url string, insecure bool, sel incident.Selector, now time.Time, max int) (*db.DB, []incident.Certificate, error) {
	d, err := db.Open(ctx, db.Config{URL: url, Insecure: insecure, MaxConns: 4})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: cannot reach the database: %w", cmd, err)
	}
	certs, err := incident.Select(ctx, d, sel, now)
	if err == nil && len(certs) > max {
		err = fmt.Errorf("%w: %d certificates selected, more than --max %d: narrow the selection or raise --max", errUsage, len(certs), max)
	}
	if err != nil {
		d.Close()
		return nil, nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return d, certs, nil
}

// limits reads --cas and the catalogue file as the workers do: the
// catalogue of their CAs and each CA's directory by name.
func (c *caFlags) limits(cmd, file string) (*ratelimit.Catalogue, map[string]string, error) {
	cas, err := c.parse(cmd)
	if err != nil {
		return nil, nil, err
	}
	cat, err := ratelimit.ServingCatalogue(file, caconfig.LimitsView(cas)...)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: --limits: %v", errUsage, cmd, err)
	}
	dirs := map[string]string{}
	for _, ca := range cas {
		dirs[ca.Name] = ca.Directory
	}
	return cat, dirs, nil
}

// loadKeyring reads the fleet keyring from --seal-keys-file, else
// CERTFLEET_SEAL_KEYS; ok is false when neither is set.
func loadKeyring(file string) (kr *seal.Keyring, ok bool, err error) {
	switch {
	case file != "":
		kr, err = seal.LoadKeyringFile(file)
	case os.Getenv(seal.EnvKeyring) != "":
		kr, err = seal.LoadKeyringEnv(seal.EnvKeyring)
	default:
		return nil, false, nil
	}
	return kr, err == nil, err
}

const revokeAbout = `Revokes certificates of the inventory at the CA that issued them (RFC 8555
revokeCert), signed with the account that ordered each (the tenant's account at
that CA) or, when the tenant has none there or the CA refuses it, with the
certificate's own key; both keys are sealed with the fleet keyring (--seal-keys-file). Each
revocation is reported as cert.revoked on the certificate events topic; with
--replace a replacement is requested first (reason reissue, emergency priority).
Running it again revokes nothing twice (the CA answers alreadyRevoked) and
publishes the same events. --dry-run lists the selection and changes nothing.

Reasons (RFC 5280; name or number): 0 unspecified, 1 keyCompromise,
3 affiliationChanged, 4 superseded, 5 cessationOfOperation (what Let's Encrypt
accepts), 2 cACompromise, 9 privilegeWithdrawn, 10 aACompromise.`

// revoke revokes the selected certificates. Exit status 1 when any failed.
func revoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("revoke", "--reason REASON (--serial S | --san NAME... | --tenant T | --issued-before T ...) [flags]", revokeAbout)
	sf := addSelectionFlags(fs, 100)
	reasonText := fs.String("reason", "", "RFC 5280 reason: a name (keyCompromise) or a number (1) (required)")
	replace := fs.Bool("replace", false, "request a replacement of each revoked certificate (reason reissue, emergency priority)")
	dryRun := fs.Bool("dry-run", false, "list the certificates that would be revoked and stop")
	asJSON := fs.Bool("json", false, "print JSON lines instead of text")
	keysFile := fs.String("seal-keys-file", os.Getenv("CERTFLEET_SEAL_KEYS_FILE"), "fleet keyring: opens the account keys and certificate keys that sign (required but for --dry-run) (env CERTFLEET_SEAL_KEYS_FILE; else CERTFLEET_SEAL_KEYS)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	cf := addCAFlags(fs)
	dbURL, dbInsecure := addDatabaseFlags(fs)
	kf := addKafkaFlags(fs)
	sel, now, err := parseIncident("revoke", fs, kf, sf, args, stdout, stderr)
	if err != nil {
		return err
	}
	reason, err := events.ParseRevocationReason(*reasonText)
	if err != nil {
		return fmt.Errorf("%w: revoke: --reason is required: %v", errUsage, err)
	}
	if *dbURL == "" {
		return fmt.Errorf("%w: revoke: no database: set --database-url or CERTFLEET_DATABASE_URL (with testenv: set -a; . ./.testenv/env; set +a)", errUsage)
	}
	var cas []caconfig.CA
	var kr *seal.Keyring
	if !*dryRun {
		if cas, err = cf.parse("revoke"); err != nil {
			return err
		}
		k, ok, err := loadKeyring(*keysFile)
		switch {
		case err != nil:
			return fmt.Errorf("%w: revoke: %v", errUsage, err)
		case !ok:
			return fmt.Errorf("%w: revoke: no keyring: the account keys and certificate keys that sign revocations are sealed with the fleet keyring; pass --seal-keys-file or set %s", errUsage, seal.EnvKeyring)
		}
		kr = k
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	d, certs, err := openAndSelect(ctx, "revoke", *dbURL, *dbInsecure, sel, now, *sf.max)
	if err != nil {
		return err
	}
	defer d.Close()
	if *dryRun || len(certs) == 0 {
		return listSelection(stdout, certs, *asJSON, "would revoke")
	}
	conn, err := kf.connect(ctx, "revoke", kf.topics.Requests, kf.topics.Events)
	if err != nil {
		return err
	}
	defer conn.Close()
	prod, err := kf.producer(conn, kf.topics.Requests, kf.topics.Events)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	defer prod.Close()
	hc, err := acmeissuer.NewHTTPClient(*cf.tlsCA, 30*time.Second)
	if err != nil {
		return fmt.Errorf("%w: revoke: --acme-tls-ca: %v", errUsage, err)
	}
	cfg := incident.RevokeConfig{CAs: map[string]incident.CARevoker{}, Publisher: prod, Keys: kr, Reason: reason, Replace: *replace}
	for _, ca := range cas {
		rv, err := acmeissuer.NewRevoker(acmeissuer.Config{Directory: ca.Directory, DB: d, Sealer: kr, HTTPClient: hc})
		if err != nil {
			return fmt.Errorf("revoke: CA %s: %w", ca.Name, err)
		}
		cfg.CAs[ca.Name] = rv
	}
	failed, err := incident.Revoke(ctx, cfg, certs, func(r incident.Revoked) { printRevoked(stdout, r, *asJSON) })
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "%d revoked, %d failed (reason %d %s)\n", len(certs)-failed, failed, reason, reason)
	}
	if failed > 0 {
		return fmt.Errorf("revoke: %d of %d certificates not revoked or not reported; run again after fixing the cause", failed, len(certs))
	}
	return nil
}

func listSelection(w io.Writer, certs []incident.Certificate, asJSON bool, what string) error {
	if asJSON {
		for _, c := range certs {
			if err := writeJSONLine(w, map[string]any{"serial": c.Serial, "sans": c.SANs, "tenant": c.Tenant, "ca": c.CA,
				"not_before": c.NotBefore.UTC(), "not_after": c.NotAfter.UTC(), "request_id": c.RequestID}); err != nil {
				return err
			}
		}
		return nil
	}
	rows := [][]string{{"SERIAL", "TENANT", "CA", "NOT BEFORE", "NOT AFTER", "SANS"}}
	for _, c := range certs {
		rows = append(rows, []string{c.Serial, c.Tenant, c.CA, fmtTime(c.NotBefore), fmtTime(c.NotAfter), strings.Join(c.SANs, ",")})
	}
	if err := table(w, rows...); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s %d certificates\n", what, len(certs))
	return nil
}

// writeJSONLine writes v as one line of JSON.
func writeJSONLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

func printRevoked(w io.Writer, r incident.Revoked, asJSON bool) {
	if asJSON {
		m := map[string]any{"serial": r.Serial, "sans": r.SANs, "tenant": r.Tenant, "ca": r.CA, "revoked": r.Err == nil}
		if r.Err != nil {
			m["error"] = events.Sanitize(r.Err.Error(), 1000)
		} else {
			m["signed_with"], m["already_revoked"], m["revoked_at"] = r.SignedWith, r.AlreadyRevoked, r.RevokedAt
			if r.ReplacementID != "" {
				m["replacement_request_id"] = r.ReplacementID
			}
		}
		_ = writeJSONLine(w, m)
		return
	}
	if r.Err != nil {
		fmt.Fprintf(w, "FAILED  %s %s: %s\n", r.Serial, strings.Join(r.SANs, ","), events.Sanitize(r.Err.Error(), 1000))
		return
	}
	line := fmt.Sprintf("revoked %s %s (signed with the %s", r.Serial, strings.Join(r.SANs, ","), r.SignedWith)
	if r.AlreadyRevoked {
		line += "; the CA had revoked it already"
	}
	line += ")"
	if r.ReplacementID != "" {
		line += "; replacement " + r.ReplacementID
	}
	fmt.Fprintln(w, line)
}
