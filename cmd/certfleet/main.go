// Command certfleet is the operator's tool. Subcommands:
//
//	certfleet migrate   apply the database migrations (safe to run from many processes at once)
//	certfleet override  set, get, list, disable and delete rate-limit overrides
//	certfleet bucket    inspect one rate-limit bucket
//	certfleet penalty   list and clear CA penalties
//	certfleet ca        show each CA's circuit breaker (failover), close one by hand
//	certfleet keys      generate a key-encryption key for sealing private keys
//	certfleet request   publish an issuance request (and wait for its outcome)
//	certfleet dlq       list and replay dead-lettered records
//	certfleet topics    create the Kafka topics (replication, min.insync.replicas, retention)
//	certfleet export    write a stored certificate and its unsealed key to files
//	certfleet manage    keep a SAN set's certificate valid (idempotent)
//	certfleet unmanage  stop managing a SAN set
//	certfleet import    manage many SAN sets from a file, in batches
//	certfleet recipient keygen, add, list, rotate, remove the recipients of sealed key deliveries
//	certfleet agent     keep the certificates and keys delivered to a recipient in a directory
//	certfleet audit     list the audit trail (exports, replays, penalty clears, override changes, issuance)
//	certfleet revoke    revoke certificates at their CA (cert.revoked), optionally replacing them
//	certfleet reissue   replace certificates against a deadline in the emergency lane, with an estimate and progress
//	certfleet forecast  renewals per day or hour against each CA's budget, herds marked
//
// Configuration comes from flags, falling back to environment variables
// (CERTFLEET_DATABASE_URL, CERTFLEET_KAFKA_BROKERS, ...). -h or --help on any
// command or subcommand prints its usage to stdout and exits 0. One option
// goes before the command: --allow-special-names (CERTFLEET_ALLOW_SPECIAL_NAMES),
// the special-use TLDs a lab CA issues for, as the worker's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/schema"
)

// Exit codes scripts can rely on.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // bad arguments or configuration
)

const usage = `usage: certfleet [--allow-special-names TLDS] <command> [flags]

commands:
  migrate   apply pending database migrations
  override  set, get, list, disable, delete rate-limit overrides
  bucket    inspect one rate-limit bucket
  penalty   list and clear CA penalties (429s with Retry-After)
  ca        show each CA's circuit breaker (status), close one by hand (reset)
  keys      generate a key-encryption key for sealing private keys
  request   publish an issuance request (and wait for its outcome)
  dlq       list and replay dead-lettered records
  topics    create the Kafka topics (replication, min.insync.replicas, retention)
  export    write a stored certificate and its unsealed key to files
  manage    keep a certificate (a SAN set) valid from now on
  unmanage  stop managing a certificate
  import    manage many certificates from a file (one SAN set per line)
  recipient keygen, add, list, rotate, remove recipients of sealed key delivery
  agent     keep the certificates and keys delivered to a recipient in a directory
  audit     list the audit trail: who exported, replayed, cleared, changed, issued
  revoke    revoke certificates at their CA (by serial, SAN set, tenant, issue time)
  reissue   replace certificates against a deadline (estimate, emergency lane, progress)
  forecast  renewals per day (or hour) ahead against each CA's budget; herds marked

Run 'certfleet <command> -h' for a command's flags (-h and --help print the
usage and exit 0). Read commands take --json.
Configuration: flags, else CERTFLEET_DATABASE_URL, CERTFLEET_KAFKA_BROKERS, ...
(with the local stack: set -a; . ./.testenv/env; set +a). Kafka over TLS and
SASL: --kafka-tls, --kafka-tls-ca, --kafka-sasl-* (see a command's -h).
--allow-special-names test,example (else CERTFLEET_ALLOW_SPECIAL_NAMES), before
the command: accept names under these special-use TLDs, for a lab CA such as
Pebble; by default only names under TLDs delegated in the ICANN section of the
public suffix list are accepted, as public CAs issue.

Exit status: 0 done; 1 the command ran and failed (conflict, unreachable
service, failed request); 2 bad arguments or configuration.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// Every command returns when ctx ends (Kafka connections close,
		// database calls are cancelled); this is the backstop for one that
		// would not, so SIGINT/SIGTERM always end the process.
		<-ctx.Done()
		time.Sleep(5 * time.Second)
		fmt.Fprintln(os.Stderr, "certfleet: interrupted")
		os.Exit(exitError)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks configuration and argument errors (exit status 2).
var errUsage = errors.New("usage")

// isHelp reports whether arg asks for help instead of naming a subcommand.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// newFlagSet returns a flag set whose usage reads "usage: certfleet NAME
// SYNOPSIS", then about (if any), then the flags.
func newFlagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: certfleet %s %s\n", name, synopsis)
		if about != "" {
			fmt.Fprintf(w, "\n%s\n", about)
		}
		fmt.Fprintln(w, "\nflags:")
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. -h or --help prints the usage once, to
// stdout, and returns flag.ErrHelp (exit status 0); a bad flag prints the
// usage to stderr and returns a usage error (exit status 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	return parseFlagsWith(fs, fs.Parse, args, stdout, stderr)
}

// parseEnvFlags is parseFlags for a flag set wrapped by env (envflag): an
// environment value that does not parse is a usage error naming the flag
// and the variable.
func parseEnvFlags(fs *flag.FlagSet, env *envflag.Set, args []string, stdout, stderr io.Writer) error {
	return parseFlagsWith(fs, env.Parse, args, stdout, stderr)
}

func parseFlagsWith(fs *flag.FlagSet, parse func([]string) error, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	err := parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return flag.ErrHelp
	case err != nil:
		fs.SetOutput(stderr)
		fs.Usage()
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	fs.SetOutput(stderr)
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	args, err := namesPolicy(args, os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, "certfleet:", err)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "migrate":
		err = migrate(ctx, args[1:], stdout, stderr)
	case "override":
		err = override(ctx, args[1:], stdout, stderr)
	case "bucket":
		err = bucket(ctx, args[1:], stdout, stderr)
	case "penalty":
		err = penalty(ctx, args[1:], stdout, stderr)
	case "ca":
		err = caCmd(ctx, args[1:], stdout, stderr)
	case "keys":
		err = keys(args[1:], stdout, stderr)
	case "request":
		err = request(ctx, args[1:], stdout, stderr)
	case "dlq":
		err = dlq(ctx, args[1:], stdout, stderr)
	case "topics":
		err = topics(ctx, args[1:], stdout, stderr)
	case "export":
		err = export(ctx, args[1:], stdout, stderr)
	case "manage":
		err = manage(ctx, args[1:], stdout, stderr)
	case "unmanage":
		err = unmanage(ctx, args[1:], stdout, stderr)
	case "import":
		err = importCmd(ctx, args[1:], stdout, stderr)
	case "recipient":
		err = recipient(ctx, args[1:], stdout, stderr)
	case "agent":
		err = agentCmd(ctx, args[1:], stdout, stderr)
	case "audit":
		err = auditCmd(ctx, args[1:], stdout, stderr)
	case "revoke":
		err = revoke(ctx, args[1:], stdout, stderr)
	case "reissue":
		err = reissue(ctx, args[1:], stdout, stderr)
	case "forecast":
		err = forecastCmd(ctx, args[1:], stdout, stderr)
	default:
		if isHelp(args[0]) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "certfleet: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "certfleet:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "certfleet:", err)
		return exitError
	}
}

// namesPolicy consumes a leading --allow-special-names LIST (or
// --allow-special-names=LIST; else CERTFLEET_ALLOW_SPECIAL_NAMES) and makes
// it the process names policy (names.SetProcessPolicy), strict when neither
// is set. It returns the remaining arguments.
func namesPolicy(args []string, getenv func(string) string) ([]string, error) {
	list, set := getenv("CERTFLEET_ALLOW_SPECIAL_NAMES"), false
	if len(args) > 0 {
		a := strings.TrimPrefix(args[0], "-")
		switch {
		case a == "-allow-special-names" || a == "allow-special-names":
			if len(args) < 2 {
				return nil, fmt.Errorf("%w: --allow-special-names needs a value", errUsage)
			}
			list, set, args = args[1], true, args[2:]
		case strings.HasPrefix(a, "-allow-special-names=") || strings.HasPrefix(a, "allow-special-names="):
			_, v, _ := strings.Cut(a, "=")
			list, set, args = v, true, args[1:]
		}
	}
	p, err := names.ParsePolicy(list)
	if err == nil {
		err = names.SetProcessPolicy(p)
	}
	if err != nil {
		from := "CERTFLEET_ALLOW_SPECIAL_NAMES"
		if set {
			from = "--allow-special-names"
		}
		return nil, fmt.Errorf("%w: %s: %v", errUsage, from, err)
	}
	return args, nil
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "[flags]", "Applies the pending database migrations; safe to run from many processes at once.")
	url, insecure := addDatabaseFlags(fs)
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long, including waiting for another migrator")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: migrate: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if *url == "" {
		return fmt.Errorf("%w: migrate: no database: set --database-url or CERTFLEET_DATABASE_URL (with testenv: set -a; . ./.testenv/env; set +a)", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	d, err := db.Open(ctx, db.Config{URL: *url, Insecure: *insecure})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer d.Close()
	applied, err := schema.Migrate(ctx, d, schema.Options{})
	for _, v := range applied {
		fmt.Fprintf(stdout, "applied migration %04d\n", v)
	}
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintln(stdout, "database schema is up to date")
	}
	return nil
}
