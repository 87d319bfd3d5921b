package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/delivery"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/internal/envflag"
	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/names"
	"github.com/certfleet/certfleet/pipeline"
)

// config is the worker's configuration: every flag falls back to an
// environment variable (named in its help), and validate checks it once at
// start with errors that name the flag.
type config struct {
	Kafka            *kafkaconn.Config // -kafka-* (brokers, TLS, SASL, timeout)
	Group            string
	Topics           events.Topics
	ProvisionTopics  bool
	Provision        *events.ProvisionOptions // -partitions, -replication-factor, ...
	DatabaseURL      string
	DatabaseInsecure bool
	SealKeysFile     string
	SealKeysEnv      string
	CAs              []caconfig.CA
	CAGroups         []caconfig.Group
	Breaker          breakerConfig // -ca-breaker-*
	FailoverAfter    time.Duration
	Lead             pipeline.LeadPolicy // -issuance-lead-floor, -issuance-lead-cap
	ACMETLSCA        string
	LimitsFile       string
	Profile          string
	AccountMode      acmeissuer.AccountMode // -account-mode: one ACME account per tenant or one shared per CA
	EgressAddress    netip.Addr             // -egress-address: where the CAs see registrations come from (invalid: not counted)
	Concurrency      int
	MaxPending       int
	Lease            time.Duration
	ShutdownTimeout  time.Duration
	SessionTimeout   time.Duration
	Listen           string
	HTTP01Listen     string
	DNS01ChallTest   string
	DNS01Config      string        // -dns01-config: DNS providers by zone or tenant (package dns01)
	OrderTimeout     time.Duration // -order-timeout
	StallTimeout     time.Duration // -stall-timeout: /healthz answers 503 after a stall this long (0: never)
	ChallengeTypes   []string
	Owner            string
	Relay            bool
	DeliverKeys      bool   // -deliver-keys: seal keys to recipients (package delivery)
	TopicDeliveries  string // -topic-deliveries
	LogLevel         string
	Names            names.Policy // -allow-special-names; strict by default
}

// parseConfig reads flags from args with environment fallbacks from getenv.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	var c config
	fs := envflag.New(flag.NewFlagSet("issuer-worker", flag.ContinueOnError), getenv)
	var cas, groups, challengeTypes, allowSpecial string
	c.Kafka = kafkaconn.RegisterFlags(fs)
	fs.String(&c.Group, "group", "CERTFLEET_WORKER_GROUP", "certfleet-issuer-workers", "Kafka consumer group shared by all workers")
	def := events.DefaultTopics()
	fs.String(&c.Topics.Requests, "topic-requests", "CERTFLEET_TOPIC_REQUESTS", def.Requests, "issuance requests topic")
	fs.String(&c.Topics.Retry, "topic-retry", "CERTFLEET_TOPIC_RETRY", def.Retry, "deferred requests topic")
	fs.String(&c.Topics.DLQ, "topic-dlq", "CERTFLEET_TOPIC_DLQ", def.DLQ, "dead-letter topic")
	fs.String(&c.Topics.Events, "topic-events", "CERTFLEET_TOPIC_EVENTS", def.Events, "certificate events topic")
	fs.String(&c.Topics.RateLimitChanges, "topic-ratelimit-changes", "CERTFLEET_TOPIC_RATELIMIT_CHANGES", def.RateLimitChanges, "override change notifications topic")
	fs.Bool(&c.ProvisionTopics, "provision-topics", "CERTFLEET_PROVISION_TOPICS", false, "create the topics at start if missing, as -partitions, -replication-factor, -min-insync-replicas and the retentions say (the principal needs CREATE; in production prefer 'certfleet topics create')")
	c.Provision = events.RegisterProvisionFlags(fs)
	fs.String(&c.DatabaseURL, "database-url", "CERTFLEET_DATABASE_URL", "", "database URL; to a host that is not loopback it needs sslmode=verify-full&sslrootcert=FILE (and sslcert, sslkey for certificate auth)")
	fs.Bool(&c.DatabaseInsecure, "database-insecure", "CERTFLEET_DATABASE_INSECURE", false, "allow a database that is not loopback without verify-full (no server verification)")
	fs.String(&c.SealKeysFile, "seal-keys-file", "CERTFLEET_SEAL_KEYS_FILE", "", "key-encryption keyring file, no group or other access (mode 0600); else the keyring in env CERTFLEET_SEAL_KEYS (local use only)")
	fs.String(&cas, "ca", "CERTFLEET_CAS", "", "CAs to order from, name=directoryURL, comma separated; eab-kid=KEYID,eab-key-file=FILE after a CA give it an External Account Binding (MAC key base64url in a file only its owner may read)")
	fs.String(&groups, "ca-group", "CERTFLEET_CA_GROUPS", "", "CA groups requests may name in their ca field, NAME=CA1+CA2[+...], comma separated: each request is ordered from the first CA of its group that is available (its breaker closed) and whose limits do not defer it beyond -ca-failover-after")
	fs.Int(&c.Breaker.Failures, "ca-breaker-failures", "CERTFLEET_CA_BREAKER_FAILURES", 5, "consecutive unavailable answers of a CA (5xx, timeouts, refused connections) that open its breaker, fleet-wide: no new orders to it until a probe succeeds")
	fs.Duration(&c.Breaker.Cooldown, "ca-breaker-cooldown", "CERTFLEET_CA_BREAKER_COOLDOWN", 30*time.Second, "how long an opened breaker keeps new orders off its CA before one probe; doubled after each failed probe")
	fs.Duration(&c.Breaker.MaxCooldown, "ca-breaker-max-cooldown", "CERTFLEET_CA_BREAKER_MAX_COOLDOWN", 10*time.Minute, "the longest a breaker stays open between probes")
	fs.Duration(&c.Lead.Floor, "issuance-lead-floor", "CERTFLEET_ISSUANCE_LEAD_FLOOR", time.Second, "least lead with which CertificatesPerDomain and CertificatesPerFQDNSet are spent (the CA counts them at issuance; the lead is the p99 of each CA's measured order time, at least this)")
	fs.Duration(&c.Lead.Cap, "issuance-lead-cap", "CERTFLEET_ISSUANCE_LEAD_CAP", 5*time.Minute, "greatest issuance lead")
	fs.Duration(&c.FailoverAfter, "ca-failover-after", "CERTFLEET_CA_FAILOVER_AFTER", 10*time.Minute, "a group's request moves to the group's next CA when the limits of the current one (tokens, the CA's 429) defer it longer than this")
	fs.String(&c.ACMETLSCA, "acme-tls-ca", "CERTFLEET_ACME_TLS_CA", "", "extra PEM root trusted for the CAs' HTTPS, e.g. Pebble's")
	fs.String(&c.LimitsFile, "limits", "CERTFLEET_LIMITS_FILE", "", "rate-limit catalogue JSON: each CA's \"limits\" change Let's Encrypt's limit by limit (a limit left out keeps Let's Encrypt's, null removes it); a -ca CA it does not list gets Let's Encrypt's limits; a directory no -ca entry uses is an error")
	fs.String(&c.Profile, "profile", "CERTFLEET_PROFILE", "", "ACME profile for requests that name none; empty: such orders name none and the CA applies its default profile")
	var accountMode, egress string
	fs.String(&egress, "egress-address", "CERTFLEET_EGRESS_ADDRESS", "", "the IP address the CAs see the workers connect from (after NAT): every new ACME account spends the CA's registration limits for it (Let's Encrypt: 10 per 3 h per address, 500 per 3 h per IPv6 /48) in the fleet's buckets; empty: registrations are not counted")
	fs.String(&accountMode, "account-mode", "CERTFLEET_ACCOUNT_MODE", string(acmeissuer.AccountPerTenant), "ACME accounts: per-tenant (one per CA and tenant) or shared (one per CA for every tenant, as Let's Encrypt asks of large integrators; tenants stay apart in certfleet's own buckets)")
	fs.String(&allowSpecial, "allow-special-names", "CERTFLEET_ALLOW_SPECIAL_NAMES", "", "special-use or undelegated TLDs whose names are accepted, comma separated, e.g. test,example for a lab CA such as Pebble; empty (production): only names under a TLD delegated in the ICANN section of the public suffix list")
	fs.Int(&c.Concurrency, "concurrency", "CERTFLEET_CONCURRENCY", 8, "orders in flight per worker")
	fs.Int(&c.MaxPending, "max-pending", "CERTFLEET_MAX_PENDING", 1024, "fetched records held at once, including those waiting for not_before")
	fs.Duration(&c.Lease, "lease", "CERTFLEET_LEASE", 15*time.Second, "how long a claim protects a request without its owner's heartbeat (renewed every third of it): a dead worker's order is continued this long after its last renewal")
	fs.Duration(&c.ShutdownTimeout, "shutdown-timeout", "CERTFLEET_SHUTDOWN_TIMEOUT", 30*time.Second, "grace for orders in flight at SIGTERM")
	fs.Duration(&c.SessionTimeout, "session-timeout", "CERTFLEET_KAFKA_SESSION_TIMEOUT", 10*time.Second, "Kafka consumer-group session: a worker that dies without leaving (kill -9, lost host) keeps its partitions this long")
	fs.String(&c.Listen, "listen", "CERTFLEET_LISTEN", "127.0.0.1:9090", "address of /healthz, /readyz and /metrics")
	fs.String(&c.HTTP01Listen, "http01-listen", "CERTFLEET_HTTP01_LISTEN", "", "address serving /.well-known/acme-challenge/ from the database; empty: none")
	fs.String(&c.DNS01ChallTest, "dns01-challtestsrv", "CERTFLEET_DNS01_CHALLTESTSRV", "", "solve dns-01 through pebble-challtestsrv at this management URL (tests only)")
	fs.String(&c.DNS01Config, "dns01-config", "CERTFLEET_DNS01_CONFIG", "", "DNS-01 configuration file (JSON, package dns01): DNS providers (rfc2136, cloudflare, route53) by zone, tenant or default, credentials in files only their owner may read, resolvers and the propagation bound")
	fs.Duration(&c.OrderTimeout, "order-timeout", "CERTFLEET_ORDER_TIMEOUT", 2*time.Minute, "bound of one ACME order, DNS-01's propagation wait included")
	fs.Duration(&c.StallTimeout, "stall-timeout", "CERTFLEET_STALL_TIMEOUT", 15*time.Minute, "/healthz answers 503 (so the orchestrator restarts the worker) when a record has been due this long with no record finished since; records waiting for their not_before do not count; 0: never")
	fs.String(&challengeTypes, "challenge-types", "CERTFLEET_CHALLENGE_TYPES", "http-01,dns-01", "challenge types the worker may solve, comma separated; dns-01 needs a DNS provider")
	host, _ := os.Hostname()
	fs.String(&c.Owner, "owner", "CERTFLEET_WORKER_ID", fmt.Sprintf("%s:%d", host, os.Getpid()), "this worker's name in claims and logs")
	fs.Bool(&c.Relay, "relay", "CERTFLEET_RELAY", true, "relay the rate-limit override outbox to Kafka")
	fs.Bool(&c.DeliverKeys, "deliver-keys", "CERTFLEET_DELIVER_KEYS", false, "seal each certificate's key to the recipients it matches ('certfleet recipient add') and publish it on -topic-deliveries; also deliver the current certificates to recipients added or rotated (one worker at a time)")
	fs.String(&c.TopicDeliveries, "topic-deliveries", "CERTFLEET_TOPIC_DELIVERIES", delivery.DefaultTopic, "key delivery topic (with -deliver-keys)")
	fs.String(&c.LogLevel, "log-level", "CERTFLEET_LOG_LEVEL", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.CAs, err = caconfig.Parse(cas); err != nil {
		return c, fmt.Errorf("-ca %w", err)
	}
	if c.CAGroups, err = caconfig.ParseGroups(groups); err != nil {
		return c, fmt.Errorf("-ca-group %w", err)
	}
	if c.AccountMode, err = acmeissuer.ParseAccountMode(accountMode); err != nil {
		return c, fmt.Errorf("-account-mode: %w", err)
	}
	if egress != "" {
		if c.EgressAddress, err = netip.ParseAddr(egress); err != nil || c.EgressAddress.IsUnspecified() {
			return c, fmt.Errorf("-egress-address: %q is not an IP address the CAs could see", egress)
		}
	}
	if c.Names, err = names.ParsePolicy(allowSpecial); err != nil {
		return c, fmt.Errorf("-allow-special-names: %w", err)
	}
	for _, ct := range strings.Split(challengeTypes, ",") {
		if ct = strings.TrimSpace(ct); ct != "" {
			c.ChallengeTypes = append(c.ChallengeTypes, ct)
		}
	}
	c.SealKeysEnv = getenv("CERTFLEET_SEAL_KEYS")
	return c, c.validate()
}

// validate checks everything that can be checked without connecting.
func (c config) validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) { errs = append(errs, fmt.Errorf("-"+flag+": "+format, a...)) }
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DatabaseURL == "" {
		bad("database-url", "required (or CERTFLEET_DATABASE_URL)")
	}
	if c.SealKeysFile == "" && c.SealKeysEnv == "" {
		bad("seal-keys-file", "required, or a keyring in CERTFLEET_SEAL_KEYS (generate one with 'certfleet keys generate')")
	}
	if len(c.CAs) == 0 {
		bad("ca", "at least one name=directoryURL required (or CERTFLEET_CAS)")
	}
	if err := caconfig.CheckAll(c.CAs); err != nil {
		bad("ca", "%v", err)
	}
	if err := caconfig.CheckGroups(c.CAGroups, c.CAs); err != nil {
		bad("ca-group", "%v", err)
	}
	if c.Breaker.Failures < 1 {
		bad("ca-breaker-failures", "%d must be at least 1", c.Breaker.Failures)
	}
	if c.Breaker.Cooldown <= 0 || c.Breaker.MaxCooldown < c.Breaker.Cooldown {
		bad("ca-breaker-cooldown", "%v must be positive and at most -ca-breaker-max-cooldown (%v)", c.Breaker.Cooldown, c.Breaker.MaxCooldown)
	}
	if c.Lead.Floor <= 0 || c.Lead.Cap < c.Lead.Floor || c.Lead.Cap > 24*time.Hour {
		bad("issuance-lead-cap", "%v must be at least -issuance-lead-floor (%v, positive) and at most 24h", c.Lead.Cap, c.Lead.Floor)
	}
	if c.FailoverAfter <= 0 {
		bad("ca-failover-after", "%v must be positive", c.FailoverAfter)
	}
	solvable := 0
	for _, ct := range c.ChallengeTypes {
		switch ct {
		case "http-01":
			solvable++
		case "dns-01":
			if c.DNS01ChallTest != "" || c.DNS01Config != "" {
				solvable++
			}
		default:
			bad("challenge-types", "%q: want http-01 or dns-01", ct)
		}
	}
	if solvable == 0 {
		bad("challenge-types", "no challenge type can be solved (dns-01 needs -dns01-config, or -dns01-challtestsrv in tests)")
	}
	if c.DNS01ChallTest != "" && c.DNS01Config != "" {
		bad("dns01-config", "and -dns01-challtestsrv exclude each other")
	}
	if c.OrderTimeout < 10*time.Second {
		bad("order-timeout", "%v is below 10s", c.OrderTimeout)
	}
	if c.StallTimeout != 0 && (c.StallTimeout <= c.Lease || c.StallTimeout <= c.OrderTimeout) {
		bad("stall-timeout", "%v must be 0 (never) or longer than -lease (%v) and -order-timeout (%v): a due record may wait that long for another owner's claim or an order slot", c.StallTimeout, c.Lease, c.OrderTimeout)
	}
	if c.Group == "" {
		bad("group", "must not be empty")
	}
	if c.Concurrency < 1 || c.Concurrency > 1000 {
		bad("concurrency", "%d is not between 1 and 1000", c.Concurrency)
	}
	if c.MaxPending < c.Concurrency || c.MaxPending > 1_000_000 {
		bad("max-pending", "%d must be at least -concurrency and at most 1000000", c.MaxPending)
	}
	if c.Provision.Partitions < 1 || c.Provision.Partitions > 10_000 {
		bad("partitions", "%d is not between 1 and 10000", c.Provision.Partitions)
	}
	if err := c.Provision.Validate(); err != nil && c.ProvisionTopics {
		bad("provision-topics", "%v", err)
	}
	if c.Lease < 10*time.Second {
		bad("lease", "%v is below 10s (a heartbeat every third of it must reach the database in time)", c.Lease)
	}
	if c.SessionTimeout < 6*time.Second || c.SessionTimeout > 5*time.Minute {
		bad("session-timeout", "%v is not between 6s and 5m (Kafka's default group.min/max.session.timeout.ms)", c.SessionTimeout)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown-timeout", "%v must be positive", c.ShutdownTimeout)
	}
	for flag, addr := range map[string]string{"listen": c.Listen, "http01-listen": c.HTTP01Listen} {
		if addr == "" && flag == "http01-listen" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(flag, "%q is not host:port", addr)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	if c.Owner == "" {
		bad("owner", "must not be empty")
	}
	if c.DeliverKeys && c.TopicDeliveries == "" {
		bad("topic-deliveries", "must not be empty with -deliver-keys")
	}
	return errors.Join(errs...)
}

// breakerConfig is the CAs' circuit breaker (package cahealth), -ca-breaker-*.
type breakerConfig struct {
	Failures              int
	Cooldown, MaxCooldown time.Duration
}
