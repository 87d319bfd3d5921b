package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/ratelimit"
)

// config is the scheduler's configuration: every flag falls back to an
// environment variable (named in its help), and validate checks it once at
// start with errors that name the flag.
type config struct {
	Kafka            *kafkaconn.Config // -kafka-* (brokers, TLS, SASL, timeout)
	Group            string
	Topics           events.Topics
	DatabaseURL      string
	DatabaseInsecure bool
	Holder           string
	Budget           ratelimit.Limit
	LimitsFile       string
	BudgetCA         string
	TickInterval     time.Duration
	Horizon          time.Duration
	LeaseTTL         time.Duration
	Watchdog         time.Duration
	BatchSize        int
	ARI              bool
	ARIRecheckMin    time.Duration
	ARIRecheckMax    time.Duration
	ACMETLSCA        string
	CAs              map[string]string // CA name -> directory: the only CAs asked for ARI
	ShutdownTimeout  time.Duration
	Listen           string
	LogLevel         string
	Names            names.Policy     // -allow-special-names; strict by default
	Retention        *retentionConfig // -retention-*: the leader-only retention job

	budgetText string
	caList     []caconfig.CA // -ca as given; CAs is its directories by name

	// Read and checked by parseConfig once the flags are valid: a secret
	// file others may read or a database URL without verify-full is a
	// configuration error.
	kafka *kafkaconn.Connector
	db    db.Config
}

// parseConfig reads flags from args with environment fallbacks from getenv.
// Help goes to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var c config
	fs := envflag.New(flag.NewFlagSet("scheduler", flag.ContinueOnError), getenv)
	fs.SetOutput(out)
	var cas, allowSpecial string
	c.Kafka = kafkaconn.RegisterFlags(fs)
	fs.String(&c.Group, "group", "CERTFLEET_SCHEDULER_GROUP", "certfleet-scheduler", "consumer group of the certificate events, shared by all schedulers")
	def := events.DefaultTopics()
	fs.String(&c.Topics.Requests, "topic-requests", "CERTFLEET_TOPIC_REQUESTS", def.Requests, "issuance requests topic, where jobs go")
	fs.String(&c.Topics.Events, "topic-events", "CERTFLEET_TOPIC_EVENTS", def.Events, "certificate events topic, where outcomes come from")
	fs.String(&c.Topics.DLQ, "topic-dlq", "CERTFLEET_TOPIC_DLQ", def.DLQ, "dead-letter topic for events that cannot be recorded")
	fs.String(&c.DatabaseURL, "database-url", "CERTFLEET_DATABASE_URL", "", "database URL; to a host that is not loopback it needs sslmode=verify-full&sslrootcert=FILE (and sslcert, sslkey for certificate auth)")
	fs.Bool(&c.DatabaseInsecure, "database-insecure", "CERTFLEET_DATABASE_INSECURE", false, "allow a database that is not loopback without verify-full (no server verification)")
	host, _ := os.Hostname()
	fs.String(&c.Holder, "holder", "CERTFLEET_SCHEDULER_ID", fmt.Sprintf("%s:%d:%s", host, os.Getpid(), randHex()), "this scheduler's name in the lease, unique per process")
	fs.String(&c.budgetText, "budget", "CERTFLEET_BUDGET", "", "fleet issuance budget COUNT/PERIOD[/BURST], e.g. 10/1s; empty: FleetOrdersPerSecond of -budget-ca in -limits")
	fs.String(&c.LimitsFile, "limits", "CERTFLEET_LIMITS_FILE", "", "rate-limit catalogue JSON; empty: Let's Encrypt's limits")
	fs.String(&c.BudgetCA, "budget-ca", "CERTFLEET_BUDGET_CA", ratelimit.LetsEncryptDirectory, "ACME directory whose FleetOrdersPerSecond is the budget")
	fs.Duration(&c.TickInterval, "tick-interval", "CERTFLEET_TICK_INTERVAL", 5*time.Second, "time between ticks")
	fs.Duration(&c.Horizon, "horizon", "CERTFLEET_HORIZON", 0, "planning horizon: its share of the budget may go out at once; 0: -tick-interval")
	fs.Duration(&c.LeaseTTL, "lease-ttl", "CERTFLEET_LEASE_TTL", 15*time.Second, "leader lease period; a standby takes over within it")
	fs.Duration(&c.Watchdog, "watchdog", "CERTFLEET_WATCHDOG", 6*time.Hour, "re-emit a job (same request id) after this long without news")
	fs.Int(&c.BatchSize, "batch-size", "CERTFLEET_BATCH_SIZE", 500, "jobs per Kafka write and per database mark")
	fs.Bool(&c.ARI, "ari", "CERTFLEET_ARI", true, "fetch ACME Renewal Information windows from the CAs")
	fs.Duration(&c.ARIRecheckMin, "ari-recheck-min", "CERTFLEET_ARI_RECHECK_MIN", time.Minute, "fetch an ARI window again no sooner than this, whatever the CA's Retry-After")
	fs.Duration(&c.ARIRecheckMax, "ari-recheck-max", "CERTFLEET_ARI_RECHECK_MAX", 24*time.Hour, "fetch an ARI window again no later than this, whatever the CA's Retry-After; tests shorten it")
	fs.String(&c.ACMETLSCA, "acme-tls-ca", "CERTFLEET_ACME_TLS_CA", "", "extra PEM root trusted for the CAs' HTTPS, e.g. Pebble's")
	fs.String(&cas, "ca", "CERTFLEET_CAS", "", "the CAs asked for ARI, name=directoryURL, comma separated: a managed certificate names one by name or by its exact directory URL; a certificate of any other CA is planned by its lifetime, and no request goes to a URL an event names")
	fs.Duration(&c.ShutdownTimeout, "shutdown-timeout", "CERTFLEET_SHUTDOWN_TIMEOUT", 20*time.Second, "grace at SIGTERM for the event in hand and the lease release")
	fs.String(&c.Listen, "listen", "CERTFLEET_LISTEN", "127.0.0.1:9091", "address of /healthz, /readyz and /metrics")
	fs.String(&c.LogLevel, "log-level", "CERTFLEET_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.String(&allowSpecial, "allow-special-names", "CERTFLEET_ALLOW_SPECIAL_NAMES", "", "special-use or undelegated TLDs whose names are accepted, comma separated, e.g. test,example for a lab CA such as Pebble; empty (production): only names under a TLD delegated in the ICANN section of the public suffix list")
	c.Retention = registerRetentionFlags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.caList, err = caconfig.Parse(cas); err != nil {
		return c, fmt.Errorf("-ca %w", err)
	}
	c.CAs = caconfig.Directories(c.caList)
	if c.Names, err = names.ParsePolicy(allowSpecial); err != nil {
		return c, fmt.Errorf("-allow-special-names: %w", err)
	}
	if err := c.validate(); err != nil {
		return c, err
	}
	if c.kafka, err = kafkaconn.New(*c.Kafka); err != nil {
		return c, err
	}
	c.db = db.Config{URL: c.DatabaseURL, Insecure: c.DatabaseInsecure, MaxConns: 8}
	if err := c.db.Check(); err != nil {
		return c, fmt.Errorf("-database-url: %w", err)
	}
	return c, nil
}

// validate checks everything that can be checked without connecting, and
// resolves the budget.
func (c *config) validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) { errs = append(errs, fmt.Errorf("-"+flag+": "+format, a...)) }
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DatabaseURL == "" {
		bad("database-url", "required (or CERTFLEET_DATABASE_URL)")
	}
	if err := c.Retention.check(); err != nil {
		errs = append(errs, err)
	}
	for flag, v := range map[string]string{"group": c.Group, "holder": c.Holder, "topic-requests": c.Topics.Requests,
		"topic-events": c.Topics.Events, "topic-dlq": c.Topics.DLQ} {
		if v == "" {
			bad(flag, "must not be empty")
		}
	}
	if c.budgetText != "" {
		l, err := parseBudget(c.budgetText)
		if err != nil {
			bad("budget", "%v", err)
		}
		c.Budget = l
	} else {
		cat := ratelimit.DefaultCatalogue()
		if c.LimitsFile != "" {
			var err error
			if cat, err = ratelimit.LoadCatalogue(c.LimitsFile); err != nil {
				bad("limits", "%v", err)
			}
		}
		if cat != nil {
			if l, ok := cat.Default(c.BudgetCA, ratelimit.FleetOrdersPerSecond); ok {
				c.Budget = l
			} else {
				bad("budget-ca", "%q has no FleetOrdersPerSecond in the catalogue; set -budget", c.BudgetCA)
			}
		}
	}
	durs := []struct {
		flag string
		v    time.Duration
		min  time.Duration
	}{{"tick-interval", c.TickInterval, 10 * time.Millisecond}, {"lease-ttl", c.LeaseTTL, time.Second},
		{"watchdog", c.Watchdog, time.Minute}, {"shutdown-timeout", c.ShutdownTimeout, time.Millisecond},
		{"ari-recheck-min", c.ARIRecheckMin, time.Second}, {"ari-recheck-max", c.ARIRecheckMax, time.Second}}
	for _, d := range durs {
		if d.v < d.min {
			bad(d.flag, "%v is below %v", d.v, d.min)
		}
	}
	if c.Horizon < 0 {
		bad("horizon", "%v is negative", c.Horizon)
	}
	if c.LeaseTTL > 0 && c.TickInterval > c.LeaseTTL {
		bad("tick-interval", "%v is longer than -lease-ttl %v", c.TickInterval, c.LeaseTTL)
	}
	if c.ARIRecheckMin > 0 && c.ARIRecheckMax < c.ARIRecheckMin {
		bad("ari-recheck-max", "%v is below -ari-recheck-min %v", c.ARIRecheckMax, c.ARIRecheckMin)
	}
	if c.BatchSize < 1 || c.BatchSize > 10_000 {
		bad("batch-size", "%d is not between 1 and 10000", c.BatchSize)
	}
	if err := caconfig.CheckAll(c.caList); err != nil {
		bad("ca", "%v", err)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	return errors.Join(errs...)
}

// parseBudget reads COUNT/PERIOD[/BURST]; the burst defaults to COUNT.
func parseBudget(s string) (ratelimit.Limit, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return ratelimit.Limit{}, fmt.Errorf("%q: want COUNT/PERIOD[/BURST], e.g. 10/1s", s)
	}
	n, err1 := strconv.ParseInt(parts[0], 10, 64)
	p, err2 := time.ParseDuration(parts[1])
	burst := n
	var err3 error
	if len(parts) == 3 {
		burst, err3 = strconv.ParseInt(parts[2], 10, 64)
	}
	if err := errors.Join(err1, err2, err3); err != nil {
		return ratelimit.Limit{}, fmt.Errorf("%q: want COUNT/PERIOD[/BURST], e.g. 10/1s", s)
	}
	l := ratelimit.Limit{Count: n, Period: p, Burst: burst}
	if err := l.Validate(); err != nil {
		return ratelimit.Limit{}, fmt.Errorf("%q: %v", s, err)
	}
	return l, nil
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
