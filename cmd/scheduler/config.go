package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
)

// config is the scheduler's configuration: every flag falls back to an
// environment variable (named in its help), and validate checks it once at
// start with errors that name the flag.
type config struct {
	Brokers         []string
	Group           string
	Topics          events.Topics
	DatabaseURL     string
	Holder          string
	Budget          ratelimit.Limit
	LimitsFile      string
	BudgetCA        string
	TickInterval    time.Duration
	Horizon         time.Duration
	LeaseTTL        time.Duration
	Watchdog        time.Duration
	BatchSize       int
	ARI             bool
	ARIRecheckMin   time.Duration
	ARIRecheckMax   time.Duration
	ACMETLSCA       string
	CAs             map[string]string // CA name -> directory, for ARI of rows that name a CA
	ShutdownTimeout time.Duration
	Listen          string
	LogLevel        string

	budgetText string
}

// parseConfig reads flags from args with environment fallbacks from getenv.
// Help goes to out.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	fs.SetOutput(out)
	var envErrs []error
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	envInt := func(name string, def int) int {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("%s: %q is not an integer", name, v))
			}
			return n
		}
		return def
	}
	envDur := func(name string, def time.Duration) time.Duration {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("%s: %q is not a duration", name, v))
			}
			return d
		}
		return def
	}
	envBool := func(name string, def bool) bool {
		if v := getenv(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("%s: %q is not true or false", name, v))
			}
			return b
		}
		return def
	}
	brokers := fs.String("brokers", env("CERTFLEET_KAFKA_BROKERS", ""), "Kafka bootstrap brokers, comma separated (env CERTFLEET_KAFKA_BROKERS)")
	fs.StringVar(&c.Group, "group", env("CERTFLEET_SCHEDULER_GROUP", "certfleet-scheduler"), "consumer group of the certificate events, shared by all schedulers (env CERTFLEET_SCHEDULER_GROUP)")
	def := events.DefaultTopics()
	fs.StringVar(&c.Topics.Requests, "topic-requests", env("CERTFLEET_TOPIC_REQUESTS", def.Requests), "issuance requests topic, where jobs go (env CERTFLEET_TOPIC_REQUESTS)")
	fs.StringVar(&c.Topics.Events, "topic-events", env("CERTFLEET_TOPIC_EVENTS", def.Events), "certificate events topic, where outcomes come from (env CERTFLEET_TOPIC_EVENTS)")
	fs.StringVar(&c.Topics.DLQ, "topic-dlq", env("CERTFLEET_TOPIC_DLQ", def.DLQ), "dead-letter topic for events that cannot be recorded (env CERTFLEET_TOPIC_DLQ)")
	fs.StringVar(&c.DatabaseURL, "database-url", env("CERTFLEET_DATABASE_URL", ""), "database URL (env CERTFLEET_DATABASE_URL)")
	host, _ := os.Hostname()
	fs.StringVar(&c.Holder, "holder", env("CERTFLEET_SCHEDULER_ID", fmt.Sprintf("%s:%d:%s", host, os.Getpid(), randHex())), "this scheduler's name in the lease, unique per process (env CERTFLEET_SCHEDULER_ID)")
	fs.StringVar(&c.budgetText, "budget", env("CERTFLEET_BUDGET", ""), "fleet issuance budget COUNT/PERIOD[/BURST], e.g. 10/1s; empty: FleetOrdersPerSecond of -budget-ca in -limits (env CERTFLEET_BUDGET)")
	fs.StringVar(&c.LimitsFile, "limits", env("CERTFLEET_LIMITS_FILE", ""), "rate-limit catalogue JSON; empty: Let's Encrypt's limits (env CERTFLEET_LIMITS_FILE)")
	fs.StringVar(&c.BudgetCA, "budget-ca", env("CERTFLEET_BUDGET_CA", ratelimit.LetsEncryptDirectory), "ACME directory whose FleetOrdersPerSecond is the budget (env CERTFLEET_BUDGET_CA)")
	fs.DurationVar(&c.TickInterval, "tick-interval", envDur("CERTFLEET_TICK_INTERVAL", 5*time.Second), "time between ticks (env CERTFLEET_TICK_INTERVAL)")
	fs.DurationVar(&c.Horizon, "horizon", envDur("CERTFLEET_HORIZON", 0), "planning horizon: its share of the budget may go out at once; 0: -tick-interval (env CERTFLEET_HORIZON)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", envDur("CERTFLEET_LEASE_TTL", 15*time.Second), "leader lease period; a standby takes over within it (env CERTFLEET_LEASE_TTL)")
	fs.DurationVar(&c.Watchdog, "watchdog", envDur("CERTFLEET_WATCHDOG", 6*time.Hour), "re-emit a job (same request id) after this long without news (env CERTFLEET_WATCHDOG)")
	fs.IntVar(&c.BatchSize, "batch-size", envInt("CERTFLEET_BATCH_SIZE", 500), "jobs per Kafka write and per database mark (env CERTFLEET_BATCH_SIZE)")
	fs.BoolVar(&c.ARI, "ari", envBool("CERTFLEET_ARI", true), "fetch ACME Renewal Information windows from the CAs (env CERTFLEET_ARI)")
	fs.DurationVar(&c.ARIRecheckMin, "ari-recheck-min", envDur("CERTFLEET_ARI_RECHECK_MIN", time.Minute), "fetch an ARI window again no sooner than this, whatever the CA's Retry-After (env CERTFLEET_ARI_RECHECK_MIN)")
	fs.DurationVar(&c.ARIRecheckMax, "ari-recheck-max", envDur("CERTFLEET_ARI_RECHECK_MAX", 24*time.Hour), "fetch an ARI window again no later than this, whatever the CA's Retry-After; tests shorten it (env CERTFLEET_ARI_RECHECK_MAX)")
	fs.StringVar(&c.ACMETLSCA, "acme-tls-ca", env("CERTFLEET_ACME_TLS_CA", ""), "extra PEM root trusted for the CAs' HTTPS, e.g. Pebble's (env CERTFLEET_ACME_TLS_CA)")
	cas := fs.String("ca", env("CERTFLEET_CAS", ""), "CA names used by managed certificates, name=directoryURL, comma separated, for ARI (env CERTFLEET_CAS)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", envDur("CERTFLEET_SHUTDOWN_TIMEOUT", 20*time.Second), "grace at SIGTERM for the event in hand and the lease release (env CERTFLEET_SHUTDOWN_TIMEOUT)")
	fs.StringVar(&c.Listen, "listen", env("CERTFLEET_LISTEN", "127.0.0.1:9091"), "address of /healthz, /readyz and /metrics (env CERTFLEET_LISTEN)")
	fs.StringVar(&c.LogLevel, "log-level", env("CERTFLEET_LOG_LEVEL", "info"), "debug, info, warn or error (env CERTFLEET_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(envErrs) > 0 {
		return c, errors.Join(envErrs...)
	}
	for _, b := range strings.Split(*brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.Brokers = append(c.Brokers, b)
		}
	}
	c.CAs = map[string]string{}
	for _, item := range strings.Split(*cas, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, dir, ok := strings.Cut(item, "=")
		if !ok {
			return c, fmt.Errorf("-ca %q: want name=directoryURL", item)
		}
		c.CAs[strings.TrimSpace(name)] = strings.TrimSpace(dir)
	}
	return c, c.validate()
}

// validate checks everything that can be checked without connecting, and
// resolves the budget.
func (c *config) validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) { errs = append(errs, fmt.Errorf("-"+flag+": "+format, a...)) }
	if len(c.Brokers) == 0 {
		bad("brokers", "required (or CERTFLEET_KAFKA_BROKERS)")
	}
	for _, b := range c.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			bad("brokers", "%q is not host:port", b)
		}
	}
	if c.DatabaseURL == "" {
		bad("database-url", "required (or CERTFLEET_DATABASE_URL)")
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
	for name, dir := range c.CAs {
		u, err := url.Parse(dir)
		if name == "" || err != nil || u.Scheme != "https" || u.Host == "" {
			bad("ca", "%s=%s: want a name and an https directory URL", name, dir)
		}
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
