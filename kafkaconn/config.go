// Package kafkaconn is certfleet's one Kafka connection configuration: the
// brokers, TLS (a CA file, an optional client certificate and key for mTLS,
// a server name), SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, the password
// read from a file) and the deadline every Kafka call gets. Every reader,
// writer and admin client of the binaries is built from one Connector:
//
//	set := envflag.New(fs, os.Getenv)
//	kc := kafkaconn.RegisterFlags(set)          // -kafka-* flags, CERTFLEET_KAFKA_* fallbacks
//	set.Parse(args)
//	conn, err := kafkaconn.New(*kc)             // validates once; errors name the flag
//	err = conn.Check(ctx, topics...)            // a metadata request; a clear cause, within the timeout
//	reader := kafka.NewReader(kafka.ReaderConfig{Brokers: conn.Brokers(), Dialer: conn.Dialer(), ...})
//	writer := events.NewProducer(events.ProducerConfig{Brokers: conn.Brokers(), Transport: conn.Transport()})
//	client := conn.Client()                     // admin calls (CreateTopics, Metadata, ListOffsets)
//
// SASL without TLS sends the password (PLAIN) or a replayable exchange
// (SCRAM) in clear and is refused unless -kafka-insecure-sasl-plaintext says
// so. The password, like every secret, comes from a file that only its owner
// may read (internal/secretfile); there is no password environment variable.
//
// Deadlines: kafka-go's Conn has none of its own, so a broker that accepts
// TCP and never answers used to hang ReadPartitions, DialLeader and a SASL
// handshake for ever. Connections from Dialer give every operation that sets
// no deadline of its own one of -kafka-timeout (default DefaultTimeout), the
// Transport bounds each dial (TLS and SASL included) by it, and Client bounds
// each request by it. DialerContext also closes its connections when a
// context ends, so SIGINT/SIGTERM end a command at once.
package kafkaconn

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/certfleet/certfleet/internal/envflag"
)

var _ flag.Value = aliasValue{}

// DefaultTimeout is -kafka-timeout's default: the bound of one dial (TCP,
// TLS and SASL) and of one request to a broker.
const DefaultTimeout = 10 * time.Second

// SASL mechanisms, as -kafka-sasl-mechanism takes them.
const (
	MechanismPlain       = "plain"
	MechanismSCRAMSHA256 = "scram-sha-256"
	MechanismSCRAMSHA512 = "scram-sha-512"
)

// Config is what the -kafka-* flags say. The zero value of every field but
// Brokers means "off" (no TLS, no SASL) or its default (Timeout).
type Config struct {
	// Brokers are the bootstrap addresses, host:port. Required.
	Brokers []string
	// TLS turns TLS on. The fields below say how; without TLS, TLSCA is
	// ignored and TLSCert, TLSKey and TLSServerName are errors.
	TLS bool
	// TLSCA is a PEM file of the CA(s) that sign the brokers' certificates;
	// empty: the system roots.
	TLSCA string
	// TLSCert and TLSKey are the client certificate and key (PEM) for mTLS;
	// both or neither. The key file must not be readable by group or others.
	TLSCert, TLSKey string
	// TLSServerName is the name the brokers' certificates must carry; empty:
	// the host of each address dialled.
	TLSServerName string
	// SASLMechanism is "", MechanismPlain, MechanismSCRAMSHA256 or
	// MechanismSCRAMSHA512 (case-insensitive).
	SASLMechanism string
	// SASLUser is the SASL user name, required with a mechanism.
	SASLUser string
	// SASLPasswordFile holds the SASL password (one trailing newline is
	// ignored); it must not be readable by group or others.
	SASLPasswordFile string
	// InsecureSASLPlaintext allows SASL without TLS (a test broker on
	// loopback). Without it SASL needs TLS.
	InsecureSASLPlaintext bool
	// Timeout bounds each dial and each request; 0 means DefaultTimeout.
	Timeout time.Duration
	// ClientID is sent to the brokers (their logs and quotas); empty:
	// "certfleet".
	ClientID string

	brokersFlag string // -kafka-brokers, split by brokers() when Brokers is empty
}

// aliasValue is a second name for a string flag that does not reset it to a
// default when defined (flag.StringVar would).
type aliasValue struct{ p *string }

func (a aliasValue) String() string {
	if a.p == nil {
		return ""
	}
	return *a.p
}

func (a aliasValue) Set(s string) error { *a.p = s; return nil }

func splitList(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// RegisterFlags registers the -kafka-* flags on s and returns the Config
// they fill once s is parsed: a flag on the command line wins over its
// CERTFLEET_KAFKA_* variable, which wins over the default (envflag).
// -brokers stays as an alias of -kafka-brokers. Call New after s.Parse.
//
// TLS is on only with -kafka-tls (CERTFLEET_KAFKA_TLS=true): the CA, the
// client certificate and the server name say how, not whether, so a shell
// that exports CERTFLEET_KAFKA_TLS_CA for one listener (testenv's env file
// does) still reaches a plaintext one.
func RegisterFlags(s *envflag.Set) *Config {
	c := &Config{}
	s.String(&c.brokersFlag, "kafka-brokers", "CERTFLEET_KAFKA_BROKERS", "", "Kafka bootstrap brokers, host:port, comma separated")
	s.Var(aliasValue{&c.brokersFlag}, "brokers", "alias of -kafka-brokers")
	s.Bool(&c.TLS, "kafka-tls", "CERTFLEET_KAFKA_TLS", false, "connect to Kafka over TLS (the SASL_SSL or SSL listener)")
	s.String(&c.TLSCA, "kafka-tls-ca", "CERTFLEET_KAFKA_TLS_CA", "", "with -kafka-tls: PEM file of the CA signing the brokers' certificates; empty: the system roots")
	s.String(&c.TLSCert, "kafka-tls-cert", "CERTFLEET_KAFKA_TLS_CERT", "", "with -kafka-tls: client certificate (PEM) for mTLS, with -kafka-tls-key")
	s.String(&c.TLSKey, "kafka-tls-key", "CERTFLEET_KAFKA_TLS_KEY", "", "with -kafka-tls: client key (PEM) for mTLS; no group or other access (mode 0600)")
	s.String(&c.TLSServerName, "kafka-tls-server-name", "CERTFLEET_KAFKA_TLS_SERVER_NAME", "", "with -kafka-tls: the name the brokers' certificates must carry; empty: the host dialled")
	s.String(&c.SASLMechanism, "kafka-sasl-mechanism", "CERTFLEET_KAFKA_SASL_MECHANISM", "", "SASL mechanism: plain, scram-sha-256 or scram-sha-512; empty: no SASL")
	s.String(&c.SASLUser, "kafka-sasl-user", "CERTFLEET_KAFKA_SASL_USER", "", "SASL user name")
	s.String(&c.SASLPasswordFile, "kafka-sasl-password-file", "CERTFLEET_KAFKA_SASL_PASSWORD_FILE", "", "file holding the SASL password; no group or other access (mode 0600)")
	s.Bool(&c.InsecureSASLPlaintext, "kafka-insecure-sasl-plaintext", "CERTFLEET_KAFKA_INSECURE_SASL_PLAINTEXT", false, "allow SASL without -kafka-tls: the credentials cross the network in clear (a test broker only)")
	s.Duration(&c.Timeout, "kafka-timeout", "CERTFLEET_KAFKA_TIMEOUT", DefaultTimeout, "bound of one Kafka dial (TCP, TLS, SASL) and of one request")
	return c
}

// brokers is Brokers, or the -kafka-brokers text split at commas.
func (c *Config) brokers() []string {
	if len(c.Brokers) > 0 || c.brokersFlag == "" {
		return c.Brokers
	}
	return splitList(c.brokersFlag)
}

// mechanism is SASLMechanism in lower case.
func (c *Config) mechanism() string { return strings.ToLower(strings.TrimSpace(c.SASLMechanism)) }

// Validate checks the configuration without reading any file or connecting.
// Every error names the flag.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) { errs = append(errs, fmt.Errorf("-"+flag+": "+format, a...)) }
	brokers := c.brokers()
	if len(brokers) == 0 {
		bad("kafka-brokers", "required (or CERTFLEET_KAFKA_BROKERS)")
	}
	for _, b := range brokers {
		host, port, err := net.SplitHostPort(b)
		if err != nil || host == "" {
			bad("kafka-brokers", "%q is not host:port", b)
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			bad("kafka-brokers", "%q: port %q is not a number from 1 to 65535", b, port)
		}
	}
	if c.TLSCert != "" && c.TLSKey == "" {
		bad("kafka-tls-key", "required with -kafka-tls-cert")
	}
	if c.TLSKey != "" && c.TLSCert == "" {
		bad("kafka-tls-cert", "required with -kafka-tls-key")
	}
	if !c.TLS {
		// In a fixed order, so the error reads the same every time.
		for _, f := range []struct{ flag, v string }{{"kafka-tls-cert", c.TLSCert}, {"kafka-tls-key", c.TLSKey}, {"kafka-tls-server-name", c.TLSServerName}} {
			if f.v != "" {
				bad(f.flag, "needs -kafka-tls (CERTFLEET_KAFKA_TLS=true)")
			}
		}
	}
	switch m := c.mechanism(); m {
	case "":
		if c.SASLUser != "" {
			bad("kafka-sasl-mechanism", "required with -kafka-sasl-user (plain, scram-sha-256 or scram-sha-512)")
		} else if c.SASLPasswordFile != "" {
			bad("kafka-sasl-mechanism", "required with -kafka-sasl-password-file (plain, scram-sha-256 or scram-sha-512)")
		}
	case MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512:
		if c.SASLUser == "" {
			bad("kafka-sasl-user", "required with -kafka-sasl-mechanism %s", m)
		}
		if c.SASLPasswordFile == "" {
			bad("kafka-sasl-password-file", "required with -kafka-sasl-mechanism %s", m)
		}
		if !c.TLS && !c.InsecureSASLPlaintext {
			bad("kafka-sasl-mechanism", "%s without TLS would send the credentials in clear: set -kafka-tls (and -kafka-tls-ca), or -kafka-insecure-sasl-plaintext for a test broker", m)
		}
	default:
		bad("kafka-sasl-mechanism", "%q: want plain, scram-sha-256 or scram-sha-512", c.SASLMechanism)
	}
	if c.Timeout < 0 || (c.Timeout > 0 && c.Timeout < 100*time.Millisecond) || c.Timeout > 10*time.Minute {
		bad("kafka-timeout", "%v is not between 100ms and 10m", c.Timeout)
	}
	return errors.Join(errs...)
}

// timeout is Timeout or DefaultTimeout.
func (c *Config) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}
