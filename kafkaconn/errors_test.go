package kafkaconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// listen serves each connection with serve on a loopback port until the
// test ends, and returns the address.
func listen(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

// silent accepts TCP and never answers: the broker that used to hang the CLI.
func silent(net.Conn) {}

func mustNew(t *testing.T, cfg Config) *Connector {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func passwordFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte("pw"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func within(t *testing.T, limit time.Duration, what string, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	if d := time.Since(start); d > limit {
		t.Errorf("%s took %v, want at most %v (err %v)", what, d, limit, err)
	}
	return err
}

func wantKind(t *testing.T, err error, kind error, parts ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v: want %v", err, kind)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not say %q", err, p)
		}
	}
}

// Against a listener that accepts TCP and never answers, every kind of call
// ends within the timeout with an error naming the broker and the cause.
func TestSilentBrokerEveryCallHasADeadline(t *testing.T) {
	addr := listen(t, silent)
	const timeout = 300 * time.Millisecond
	limit := timeout + 2*time.Second
	plain := mustNew(t, Config{Brokers: []string{addr}, Timeout: timeout})
	sasl := mustNew(t, Config{Brokers: []string{addr}, Timeout: timeout, SASLMechanism: "scram-sha-256", SASLUser: "u",
		SASLPasswordFile: passwordFile(t), InsecureSASLPlaintext: true})
	ctx := context.Background() // no deadline of its own: the Connector's must hold

	for name, c := range map[string]*Connector{"plaintext": plain, "sasl": sasl} {
		t.Run(name, func(t *testing.T) {
			err := within(t, limit, "Check", func() error { return c.Check(ctx, "topic") })
			wantKind(t, err, ErrTimeout, addr, "no answer within 300ms")

			err = within(t, limit, "Dialer: dial and ReadPartitions", func() error {
				conn, err := c.Dialer().DialContext(ctx, "tcp", addr)
				if err != nil {
					return err
				}
				defer conn.Close()
				_, err = conn.ReadPartitions("topic")
				return err
			})
			wantKind(t, c.Explain(err, "describe topic topic"), ErrTimeout, addr)

			_, err = within2(t, limit, "Partitions", func() (any, error) { return c.Partitions(ctx, "topic") })
			wantKind(t, err, ErrTimeout, addr)

			_, err = within2(t, limit, "Client().Metadata", func() (any, error) {
				return c.Client().Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"topic"}})
			})
			if err == nil {
				t.Fatal("metadata from a silent broker")
			}
		})
	}
}

func within2(t *testing.T, limit time.Duration, what string, f func() (any, error)) (any, error) {
	t.Helper()
	var v any
	err := within(t, limit, what, func() error {
		var err error
		v, err = f()
		return err
	})
	return v, err
}

// DialerContext's connections close when the context ends, so an
// interrupted command returns at once, long before the timeout.
func TestDialerContextCancelEndsCallsAtOnce(t *testing.T) {
	addr := listen(t, silent)
	c := mustNew(t, Config{Brokers: []string{addr}, Timeout: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := c.DialerContext(ctx).DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.AfterFunc(100*time.Millisecond, cancel)
	err = within(t, 2*time.Second, "ReadPartitions after cancel", func() error {
		_, err := conn.ReadPartitions("topic")
		return err
	})
	if err == nil {
		t.Fatal("ReadPartitions succeeded against a silent broker")
	}
	if _, err := c.DialerContext(ctx).DialContext(context.Background(), "tcp", addr); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial after cancel: %v", err)
	}
}

func TestDeadlineConnDefaultsZeroDeadlines(t *testing.T) {
	addr := listen(t, silent)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := newDeadlineConn(nil, raw, 150*time.Millisecond)
	defer d.Close()
	_ = d.SetDeadline(time.Time{})
	err = within(t, 2*time.Second, "Read with a zero deadline", func() error { _, err := d.Read(make([]byte, 1)); return err })
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read: %v, want a timeout", err)
	}
	// An explicit deadline is kept.
	_ = d.SetReadDeadline(time.Now().Add(time.Hour))
	done := make(chan error, 1)
	go func() { _, err := d.Read(make([]byte, 1)); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("read with an explicit one-hour deadline ended: %v", err)
	case <-time.After(400 * time.Millisecond):
	}
}

// tlsServer completes handshakes with cert (requiring a client certificate
// from pool when clientCAs is set) and then never answers.
func tlsServer(t *testing.T, cert tls.Certificate, clientCAs bool, p testPKI) string {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, p.pool
	}
	return listen(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() == nil {
			_, _ = io.Copy(io.Discard, tc)
		}
	})
}

func TestTLSCausesAreNamed(t *testing.T) {
	dir := t.TempDir()
	p := newTestPKI(t, dir)
	other := newTestPKI(t, t.TempDir())
	ctx := context.Background()
	const timeout = 2 * time.Second

	addr := tlsServer(t, p.server, false, p)
	c := mustNew(t, Config{Brokers: []string{addr}, TLS: true, TLSCA: other.caFile, Timeout: timeout})
	err := within(t, timeout, "Check, untrusted", func() error { return c.Check(ctx) })
	wantKind(t, err, ErrUntrustedCertificate, addr, "the broker's certificate is not signed by -kafka-tls-ca "+other.caFile)
	conn, err := c.Dialer().DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
	}
	wantKind(t, c.Explain(err, ""), ErrUntrustedCertificate, other.caFile)

	c = mustNew(t, Config{Brokers: []string{addr}, TLS: true, TLSCA: p.caFile, TLSServerName: "kafka.example", Timeout: timeout})
	wantKind(t, c.Check(ctx), ErrCertificateName, `"kafka.example"`, "-kafka-tls-server-name")

	c = mustNew(t, Config{Brokers: []string{addr}, TLS: true, Timeout: timeout})
	wantKind(t, c.Check(ctx), ErrUntrustedCertificate, "the system roots (set -kafka-tls-ca)")

	mtls := tlsServer(t, p.server, true, p)
	c = mustNew(t, Config{Brokers: []string{mtls}, TLS: true, TLSCA: p.caFile, Timeout: timeout})
	wantKind(t, c.Check(ctx), ErrTLSRefused, mtls, "-kafka-tls-cert")

	http := listen(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		_, _ = io.Copy(io.Discard, c)
	})
	c = mustNew(t, Config{Brokers: []string{http}, TLS: true, TLSCA: p.caFile, Timeout: timeout})
	wantKind(t, c.Check(ctx), ErrNotTLS, http, "does not speak TLS")
}

func TestExplain(t *testing.T) {
	pw := passwordFile(t)
	c := mustNew(t, Config{Brokers: []string{"k1:9093", "k2:9093"}, TLS: true, SASLMechanism: "scram-sha-512", SASLUser: "worker",
		SASLPasswordFile: pw})
	refused := func() error {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		_, err := net.Dial("tcp", a)
		return err
	}()
	for _, tc := range []struct {
		name   string
		err    error
		action string
		kind   error
		want   string
	}{
		{"sasl", fmt.Errorf("could not authenticate: %w", kafka.SASLAuthenticationFailed), "", ErrAuthentication,
			"kafka k1:9093,k2:9093: SASL authentication as worker failed (wrong password or mechanism scram-sha-512)"},
		{"mechanism", kafka.UnsupportedSASLMechanism, "", ErrMechanism, "does not enable SASL mechanism scram-sha-512"},
		{"topic acl", kafka.TopicAuthorizationFailed, "write to topic certfleet.issuance.requests", ErrAuthorization,
			"principal worker may not write to topic certfleet.issuance.requests (missing ACL"},
		{"group acl", kafka.GroupAuthorizationFailed, "join consumer group g", ErrAuthorization, "principal worker may not join consumer group g"},
		{"cluster acl", kafka.ClusterAuthorizationFailed, "create topics", ErrAuthorization, "may not create topics (missing ACL"},
		{"unknown topic", kafka.UnknownTopicOrPartition, "read topic t", ErrUnknownTopic, "cannot read topic t: the topic does not exist, or principal worker may not describe it"},
		{"refused", refused, "", ErrUnreachable, "connection refused"},
		{"not kafka", io.ErrNoProgress, "", ErrNotKafka, "wrong port"},
		{"eof", fmt.Errorf("x: %w", io.EOF), "", ErrNotKafka, "wrong port"},
		{"reset", syscall.ECONNRESET, "", ErrNotKafka, "wrong port"},
		{"deadline", context.DeadlineExceeded, "", ErrTimeout, "no answer within 10s"},
		{"other", errors.New("boom"), "do a thing", nil, "kafka k1:9093,k2:9093: cannot do a thing: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.Explain(tc.err, tc.action)
			if !strings.Contains(got.Error(), tc.want) || !errors.Is(got, tc.err) || (tc.kind != nil && !errors.Is(got, tc.kind)) {
				t.Fatalf("Explain = %q, want %q (kind %v, wrapping the original)", got, tc.want, tc.kind)
			}
			if again := c.Explain(got, "other"); again != got {
				t.Fatalf("explaining twice changed %q to %q", got, again)
			}
		})
	}
	if err := c.Explain(context.Canceled, ""); err != context.Canceled {
		t.Fatalf("cancellation explained as %v", err)
	}
	if c.Explain(nil, "") != nil {
		t.Fatal("nil explained")
	}
}
