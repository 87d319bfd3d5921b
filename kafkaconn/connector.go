package kafkaconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/certfleet/certfleet/internal/secretfile"
)

// Connector builds Kafka clients from a validated Config whose files have
// been read. It is safe for concurrent use.
type Connector struct {
	cfg       Config
	tls       *tls.Config
	mech      sasl.Mechanism
	principal string // who the brokers see, for error messages

	mu         sync.Mutex
	transports map[string]*kafka.Transport // by sorted topic set
}

// New validates cfg, reads its files (the CA, the client certificate and
// key, the SASL password; the key and the password must not be readable by
// group or others) and returns a Connector. It does not connect: Check does.
// Errors name the flag and the file.
func New(cfg Config) (*Connector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Brokers = append([]string(nil), cfg.brokers()...)
	cfg.SASLMechanism = cfg.mechanism()
	if cfg.ClientID == "" {
		cfg.ClientID = "certfleet"
	}
	c := &Connector{cfg: cfg, principal: "ANONYMOUS"}
	if cfg.TLS {
		t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
		if cfg.TLSCA != "" {
			pem, err := os.ReadFile(cfg.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("-kafka-tls-ca: %w", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("-kafka-tls-ca: %s holds no PEM certificate", cfg.TLSCA)
			}
		}
		if cfg.TLSCert != "" {
			certPEM, err := os.ReadFile(cfg.TLSCert)
			if err != nil {
				return nil, fmt.Errorf("-kafka-tls-cert: %w", err)
			}
			keyPEM, err := secretfile.Read(cfg.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("-kafka-tls-key: %w", err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			clear(keyPEM)
			if err != nil {
				return nil, fmt.Errorf("-kafka-tls-cert %s, -kafka-tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
			}
			leaf := pair.Leaf
			if leaf == nil {
				if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
					return nil, fmt.Errorf("-kafka-tls-cert: %s: %w", cfg.TLSCert, err)
				}
			}
			if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
				return nil, fmt.Errorf("-kafka-tls-cert: %s is valid only from %s to %s", cfg.TLSCert,
					leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			t.Certificates = []tls.Certificate{pair}
			c.principal = leaf.Subject.CommonName
			if c.principal == "" {
				c.principal = leaf.Subject.String()
			}
		}
		c.tls = t
	}
	if m := cfg.SASLMechanism; m != "" {
		pw, err := secretfile.ReadTrimmed(cfg.SASLPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("-kafka-sasl-password-file: %w", err)
		}
		switch m {
		case MechanismPlain:
			c.mech = plain.Mechanism{Username: cfg.SASLUser, Password: string(pw)}
		case MechanismSCRAMSHA256, MechanismSCRAMSHA512:
			algo := scram.SHA256
			if m == MechanismSCRAMSHA512 {
				algo = scram.SHA512
			}
			if c.mech, err = scram.Mechanism(algo, cfg.SASLUser, string(pw)); err != nil {
				return nil, fmt.Errorf("-kafka-sasl-user, -kafka-sasl-password-file: %w", err)
			}
		}
		clear(pw)
		c.principal = cfg.SASLUser
	}
	return c, nil
}

// Brokers returns the bootstrap addresses.
func (c *Connector) Brokers() []string { return append([]string(nil), c.cfg.Brokers...) }

// Timeout is the bound of one dial and one request.
func (c *Connector) Timeout() time.Duration { return c.cfg.timeout() }

// Principal is who the brokers see, for error messages: the SASL user, the
// client certificate's CN (what a cluster's ssl.principal.mapping.rules
// usually map it to; Kafka's default is the whole subject), else ANONYMOUS.
func (c *Connector) Principal() string { return c.principal }

// String describes the connection without secrets, for logs.
func (c *Connector) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kafka %s", strings.Join(c.cfg.Brokers, ","))
	if c.tls != nil {
		b.WriteString(" tls")
		if c.cfg.TLSCert != "" {
			b.WriteString("+client-cert")
		}
	} else {
		b.WriteString(" plaintext")
	}
	if c.mech != nil {
		fmt.Fprintf(&b, " sasl %s as %s", c.cfg.SASLMechanism, c.cfg.SASLUser)
	}
	return b.String()
}

// Dialer returns a kafka.Dialer for readers and kafka.Conn: TLS, SASL,
// Timeout on every dial, and every connection operation without a deadline
// of its own bounded by Timeout.
func (c *Connector) Dialer() *kafka.Dialer { return c.dialer(nil) }

// DialerContext is Dialer whose connections are also closed when ctx ends,
// so a blocked call returns at once: for commands that stop on SIGINT.
func (c *Connector) DialerContext(ctx context.Context) *kafka.Dialer { return c.dialer(ctx) }

func (c *Connector) dialer(ctx context.Context) *kafka.Dialer {
	nd := &net.Dialer{KeepAlive: 30 * time.Second}
	timeout := c.Timeout()
	return &kafka.Dialer{
		ClientID:      c.cfg.ClientID,
		Timeout:       timeout,
		TLS:           c.tls,
		SASLMechanism: c.mech,
		DialFunc: func(dctx context.Context, network, address string) (net.Conn, error) {
			if ctx != nil && ctx.Err() != nil {
				return nil, ctx.Err()
			}
			conn, err := nd.DialContext(dctx, network, address)
			if err != nil {
				return nil, err
			}
			return newDeadlineConn(ctx, conn, timeout), nil
		},
	}
}

// Transport returns a kafka.Transport for writers and clients: TLS, SASL,
// and DialTimeout covering TCP, TLS and SASL. Requests are bounded by their
// context: Client sets Timeout, a kafka.Writer its WriteTimeout.
//
// topics are the topics the Transport will be used with. A Transport
// answers metadata requests from a cache it refreshes in the background;
// without topics that cache holds every topic the principal may describe,
// so a topic it may not is "unknown" to a writer. With topics the cache
// asks for exactly those, and a write to one of them without the ACL fails
// with TopicAuthorizationFailed, which Explain names; but a writer on it
// can reach no other topic. One Transport is kept per topic set (connection
// pools are per Transport), so calling again shares it.
func (c *Connector) Transport(topics ...string) *kafka.Transport {
	key := strings.Join(sortedUnique(topics), "\n")
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.transports[key]; ok {
		return t
	}
	if c.transports == nil {
		c.transports = map[string]*kafka.Transport{}
	}
	t := c.newTransport(topics)
	c.transports[key] = t
	return t
}

func (c *Connector) newTransport(topics []string) *kafka.Transport {
	return &kafka.Transport{
		Dial:           (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		DialTimeout:    c.Timeout(),
		ClientID:       c.cfg.ClientID,
		TLS:            c.tls,
		SASL:           c.mech,
		MetadataTopics: sortedUnique(topics),
	}
}

func sortedUnique(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

// Client returns a kafka.Client on the bootstrap brokers for admin calls
// (Metadata, CreateTopics, ListOffsets), each bounded by Timeout, on
// Transport(topics...).
func (c *Connector) Client(topics ...string) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(c.cfg.Brokers...), Timeout: c.Timeout(), Transport: c.Transport(topics...)}
}

// Close closes the idle connections of every Transport handed out and
// stops their background metadata refresh.
func (c *Connector) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.transports {
		t.CloseIdleConnections()
	}
	c.transports = nil
}

// NewReader is kafka.NewReader with Brokers and Dialer filled from the
// Connector when rc leaves them empty.
func (c *Connector) NewReader(rc kafka.ReaderConfig) *kafka.Reader {
	if len(rc.Brokers) == 0 {
		rc.Brokers = c.Brokers()
	}
	if rc.Dialer == nil {
		rc.Dialer = c.Dialer()
	}
	return kafka.NewReader(rc)
}

// deadlineConn gives every operation that sets no deadline one of timeout:
// kafka.Conn sets the connection's deadline before each request, to zero
// (none) unless the caller set one. With ctx, it closes the connection when
// ctx ends.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	stop    func() bool
}

func newDeadlineConn(ctx context.Context, conn net.Conn, timeout time.Duration) *deadlineConn {
	d := &deadlineConn{Conn: conn, timeout: timeout}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if ctx != nil {
		d.stop = context.AfterFunc(ctx, func() { conn.Close() })
	}
	return d
}

func (d *deadlineConn) or(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now().Add(d.timeout)
	}
	return t
}

func (d *deadlineConn) SetDeadline(t time.Time) error      { return d.Conn.SetDeadline(d.or(t)) }
func (d *deadlineConn) SetReadDeadline(t time.Time) error  { return d.Conn.SetReadDeadline(d.or(t)) }
func (d *deadlineConn) SetWriteDeadline(t time.Time) error { return d.Conn.SetWriteDeadline(d.or(t)) }

func (d *deadlineConn) Close() error {
	if d.stop != nil {
		d.stop()
	}
	return d.Conn.Close()
}
