package testenv_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/certfleet/certfleet/testenv"
)

// The stack's production-shaped Kafka listeners and TLS database: what a
// managed cluster would do, checked from the client side.

func trustStack(t *testing.T, s testenv.Settings) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(s.KafkaTLSCA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", s.KafkaTLSCA)
	}
	return pool
}

func secret(t *testing.T, s testenv.Settings, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.SecretsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func scramAs(t *testing.T, s testenv.Settings, algo scram.Algorithm, principal, password string) sasl.Mechanism {
	t.Helper()
	m, err := scram.Mechanism(algo, principal, password)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// produce writes one record to topic through the SASL_SSL listener with mech,
// or through the mTLS listener with cert when mech is nil.
func produce(ctx context.Context, s testenv.Settings, tlsCfg *tls.Config, mech sasl.Mechanism, topic string) error {
	brokers := s.KafkaSASLBrokers
	if mech == nil {
		brokers = s.KafkaMTLSBrokers
	}
	tr := &kafka.Transport{TLS: tlsCfg, SASL: mech, DialTimeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Transport: tr, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, MaxAttempts: 2}
	defer w.Close()
	return w.WriteMessages(ctx, kafka.Message{Value: []byte("x")})
}

// denied reports whether err is Kafka's refusal of a topic: Topic
// Authorization Failed, or Unknown Topic Or Partition, which is what a
// principal that may not even describe the topic is told (Kafka hides the
// existence of topics from those who cannot see them). A writer wraps
// per-record errors in kafka.WriteErrors.
func denied(err error) bool {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && !denied(e) {
				return false
			}
		}
		return we.Count() > 0
	}
	return errors.Is(err, kafka.TopicAuthorizationFailed) || errors.Is(err, kafka.UnknownTopicOrPartition)
}

func TestKafkaSASLAndACLs(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	suffix := "." + randomSuffix()
	requests, events := "certfleet.issuance.requests"+suffix, "certfleet.certificates.events"+suffix
	for _, topic := range []string{requests, events} {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	trusted := &tls.Config{RootCAs: trustStack(t, s)}
	pw := func(p string) string { return secret(t, s, p+".password") }

	for _, tc := range []struct {
		name    string
		mech    sasl.Mechanism
		topic   string
		wantErr error // nil: allowed
	}{
		{"producer SCRAM-SHA-512 writes requests", scramAs(t, s, scram.SHA512, testenv.PrincipalProducer, pw(testenv.PrincipalProducer)), requests, nil},
		{"producer SCRAM-SHA-256 writes requests", scramAs(t, s, scram.SHA256, testenv.PrincipalProducer, pw(testenv.PrincipalProducer)), requests, nil},
		{"producer PLAIN writes requests", plain.Mechanism{Username: testenv.PrincipalProducer, Password: pw(testenv.PrincipalProducer)}, requests, nil},
		{"producer may not write outcomes", scramAs(t, s, scram.SHA512, testenv.PrincipalProducer, pw(testenv.PrincipalProducer)), events, kafka.TopicAuthorizationFailed},
		{"worker writes outcomes", scramAs(t, s, scram.SHA512, testenv.PrincipalWorker, pw(testenv.PrincipalWorker)), events, nil},
		{"worker may not write requests", scramAs(t, s, scram.SHA512, testenv.PrincipalWorker, pw(testenv.PrincipalWorker)), requests, kafka.TopicAuthorizationFailed},
		{"nobody may not write requests", scramAs(t, s, scram.SHA512, testenv.PrincipalNobody, pw(testenv.PrincipalNobody)), requests, kafka.TopicAuthorizationFailed},
		{"wrong password", scramAs(t, s, scram.SHA512, testenv.PrincipalProducer, "wrong"), requests, kafka.SASLAuthenticationFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := produce(ctx, s, trusted, tc.mech, tc.topic)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("want success, got %v", err)
			}
			if tc.wantErr == kafka.TopicAuthorizationFailed && !denied(err) {
				t.Fatalf("want the topic refused, got %v", err)
			}
			if tc.wantErr != nil && tc.wantErr != kafka.TopicAuthorizationFailed && !errors.Is(err, tc.wantErr) {
				t.Fatalf("want %v, got %v", tc.wantErr, err)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("took %v: a refusal must come fast", d)
			}
		})
	}

	t.Run("a broker certificate from another CA is refused", func(t *testing.T) {
		err := produce(ctx, s, &tls.Config{}, scramAs(t, s, scram.SHA512, testenv.PrincipalProducer, pw(testenv.PrincipalProducer)), requests)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("want an unknown-authority error, got %v", err)
		}
	})

	mtls := func(t *testing.T, principal string) *tls.Config {
		cert, err := tls.LoadX509KeyPair(filepath.Join(s.SecretsDir, principal+".crt"), filepath.Join(s.SecretsDir, principal+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{RootCAs: trustStack(t, s), Certificates: []tls.Certificate{cert}}
	}
	t.Run("mTLS: the certificate's CN is the principal", func(t *testing.T) {
		if err := produce(ctx, s, mtls(t, testenv.PrincipalProducer), nil, requests); err != nil {
			t.Fatalf("producer by certificate: %v", err)
		}
		if err := produce(ctx, s, mtls(t, testenv.PrincipalProducer), nil, events); !denied(err) {
			t.Fatalf("producer by certificate writing outcomes: want the topic refused, got %v", err)
		}
	})
	t.Run("mTLS: no client certificate, no connection", func(t *testing.T) {
		if err := produce(ctx, s, trusted, nil, requests); err == nil {
			t.Fatal("the mTLS listener accepted a client without a certificate")
		}
	})
}

func TestDatabaseTLS(t *testing.T) {
	s := testenv.Require(t)
	if s.DatabaseKind == "cockroach" {
		t.Skip("CockroachDB runs --insecure in testenv")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DatabaseTLSURL)
	if err != nil {
		t.Fatalf("connecting with verify-full and a client certificate: %v", err)
	}
	defer conn.Close(ctx)
	var user string
	var ssl bool
	if err := conn.QueryRow(ctx, `SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&user, &ssl); err != nil {
		t.Fatal(err)
	}
	if user != "certfleet" || !ssl {
		t.Errorf("logged in as %q with ssl=%v, want certfleet over TLS", user, ssl)
	}

	// The same role without TLS, and TLS against the wrong trust anchor,
	// are both refused.
	plainURL := strings.Split(s.DatabaseTLSURL, "?")[0] + "?sslmode=disable"
	if c, err := pgx.Connect(ctx, plainURL); err == nil {
		c.Close(ctx)
		t.Error("the certificate role logged in without TLS")
	}
	wrongRoot := strings.Replace(s.DatabaseTLSURL, "sslrootcert="+s.KafkaTLSCA, "sslrootcert="+s.ACMETLSCA, 1)
	if wrongRoot == s.DatabaseTLSURL {
		t.Fatalf("DatabaseTLSURL %q does not name the stack CA %s", s.DatabaseTLSURL, s.KafkaTLSCA)
	}
	if c, err := pgx.Connect(ctx, wrongRoot); err == nil {
		c.Close(ctx)
		t.Error("verify-full accepted a server certificate from another CA")
	}
}

// Key delivery's rights: the worker writes deliveries; the agent reads
// deliveries (in a certfleet-agent* group) and outcomes, and writes nothing,
// neither deliveries nor requests; the scheduler may not read deliveries.
func TestKafkaDeliveryACLs(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	suffix := "." + randomSuffix()
	deliveries, requests := "certfleet.certificates.deliveries"+suffix, "certfleet.issuance.requests"+suffix
	for _, topic := range []string{deliveries, requests} {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	trusted := &tls.Config{RootCAs: trustStack(t, s)}
	as := func(p string) sasl.Mechanism {
		return scramAs(t, s, scram.SHA512, p, secret(t, s, p+".password"))
	}
	if err := produce(ctx, s, trusted, as(testenv.PrincipalWorker), deliveries); err != nil {
		t.Fatalf("worker writes deliveries: %v", err)
	}
	for _, tc := range []struct{ principal, topic string }{
		{testenv.PrincipalAgent, deliveries}, {testenv.PrincipalAgent, requests}, {testenv.PrincipalProducer, deliveries},
	} {
		if err := produce(ctx, s, trusted, as(tc.principal), tc.topic); !denied(err) {
			t.Errorf("%s writing %s: want the topic refused, got %v", tc.principal, tc.topic, err)
		}
	}
	read := func(principal, group string) error {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.KafkaSASLBrokers, GroupID: group, Topic: deliveries, StartOffset: kafka.FirstOffset,
			Dialer: &kafka.Dialer{TLS: trusted, SASLMechanism: as(principal), Timeout: 5 * time.Second}, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		_, err := r.FetchMessage(rctx)
		return err
	}
	if err := read(testenv.PrincipalAgent, "certfleet-agent-"+randomSuffix()); err != nil {
		t.Errorf("agent reads deliveries in its group: %v", err)
	}
	if err := read(testenv.PrincipalScheduler, "certfleet-sched-"+randomSuffix()); err == nil {
		t.Error("the scheduler read key deliveries")
	}
}
