package kafkaconn_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/kafkaconn"
	"github.com/certfleet/certfleet/testenv"
)

// stack returns the running stack's settings, failing (not skipping) when
// it lacks the production-shaped listeners.
func stack(t *testing.T) testenv.Settings {
	t.Helper()
	s := testenv.Require(t)
	if len(s.KafkaSASLBrokers) == 0 || len(s.KafkaMTLSBrokers) == 0 || s.KafkaTLSCA == "" || s.SecretsDir == "" {
		t.Fatalf("testenv has no SASL_SSL/mTLS listeners or secrets (%s, %s, %s, %s): restart it with `go run ./cmd/testenv up`",
			testenv.EnvKafkaSASLBrokers, testenv.EnvKafkaMTLSBrokers, testenv.EnvKafkaTLSCA, testenv.EnvSecretsDir)
	}
	return s
}

func scram(s testenv.Settings, mech, user, passwordOf string) kafkaconn.Config {
	return kafkaconn.Config{Brokers: s.KafkaSASLBrokers, TLS: true, TLSCA: s.KafkaTLSCA, SASLMechanism: mech, SASLUser: user,
		SASLPasswordFile: filepath.Join(s.SecretsDir, passwordOf+".password"), Timeout: 5 * time.Second}
}

func mtls(s testenv.Settings, principal string) kafkaconn.Config {
	return kafkaconn.Config{Brokers: s.KafkaMTLSBrokers, TLS: true, TLSCA: s.KafkaTLSCA, Timeout: 5 * time.Second,
		TLSCert: filepath.Join(s.SecretsDir, principal+".crt"), TLSKey: filepath.Join(s.SecretsDir, principal+".key")}
}

func connect(t *testing.T, cfg kafkaconn.Config) *kafkaconn.Connector {
	t.Helper()
	c, err := kafkaconn.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// topics creates a requests and an events topic of this test, named under
// the default names so the testenv ACLs (granted on those prefixes) apply.
func topics(t *testing.T, s testenv.Settings) (requests, events string) {
	t.Helper()
	suffix := fmt.Sprintf(".kafkaconn-%d", rand.Uint64())
	requests, events = "certfleet.issuance.requests"+suffix, "certfleet.certificates.events"+suffix
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tp := range []string{requests, events} {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, tp, 2); err != nil {
			t.Fatal(err)
		}
	}
	return requests, events
}

func write(ctx context.Context, c *kafkaconn.Connector, topic, value string) error {
	w := &kafka.Writer{Addr: kafka.TCP(c.Brokers()...), Transport: c.Transport(topic), RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond, WriteTimeout: c.Timeout(), MaxAttempts: 2}
	defer w.Close()
	err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: []byte("k"), Value: []byte(value)})
	return c.Explain(err, "write to topic "+topic)
}

func TestSASLMechanismsWriteAndRead(t *testing.T) {
	s := stack(t)
	requests, _ := topics(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, mech := range []string{kafkaconn.MechanismPlain, kafkaconn.MechanismSCRAMSHA256, kafkaconn.MechanismSCRAMSHA512} {
		c := connect(t, scram(s, mech, testenv.PrincipalProducer, testenv.PrincipalProducer))
		if err := c.Check(ctx, requests); err != nil {
			t.Fatalf("%s: Check: %v", mech, err)
		}
		if err := write(ctx, c, requests, mech); err != nil {
			t.Fatalf("%s: %v", mech, err)
		}
	}
	// The worker reads them back over SASL_SSL through the Dialer, and over
	// mTLS through Offsets and a partition reader.
	for name, cfg := range map[string]kafkaconn.Config{
		"sasl": scram(s, kafkaconn.MechanismSCRAMSHA512, testenv.PrincipalWorker, testenv.PrincipalWorker),
		"mtls": mtls(s, testenv.PrincipalWorker),
	} {
		c := connect(t, cfg)
		offs, err := c.Offsets(ctx, requests)
		if err != nil {
			t.Fatalf("%s: Offsets: %v", name, err)
		}
		n := 0
		for p, o := range offs {
			if o.End == o.First {
				continue
			}
			r := c.NewReader(kafka.ReaderConfig{Topic: requests, Partition: p, MaxWait: 100 * time.Millisecond})
			if err := r.SetOffset(o.First); err != nil {
				t.Fatal(err)
			}
			for i := o.First; i < o.End; i++ {
				if _, err := r.ReadMessage(ctx); err != nil {
					t.Fatalf("%s: reading %s/%d: %v", name, requests, p, c.Explain(err, "read topic "+requests))
				}
				n++
			}
			r.Close()
		}
		if n != 3 {
			t.Fatalf("%s: read %d records, want 3 (%v)", name, n, offs)
		}
	}
}

func TestMissingACLIsNamed(t *testing.T) {
	s := stack(t)
	requests, events := topics(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name      string
		cfg       kafkaconn.Config
		topic     string
		principal string
	}{
		{"producer writes events", scram(s, kafkaconn.MechanismSCRAMSHA512, testenv.PrincipalProducer, testenv.PrincipalProducer), events, "producer"},
		{"nobody writes requests (scram)", scram(s, kafkaconn.MechanismSCRAMSHA256, testenv.PrincipalNobody, testenv.PrincipalNobody), requests, "nobody"},
		{"nobody writes requests (mtls)", mtls(s, testenv.PrincipalNobody), requests, "nobody"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, tc.cfg)
			start := time.Now()
			err := write(ctx, c, tc.topic, "x")
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the refused write took %v", d)
			}
			want := fmt.Sprintf("principal %s may not write to topic %s (missing ACL", tc.principal, tc.topic)
			if !errors.Is(err, kafkaconn.ErrAuthorization) || !strings.Contains(err.Error(), want) {
				t.Fatalf("write: %v\nwant %q", err, want)
			}
		})
	}
	// Check names the missing ACL as well (describe is implied by any right).
	err := connect(t, scram(s, kafkaconn.MechanismPlain, testenv.PrincipalNobody, testenv.PrincipalNobody)).Check(ctx, requests)
	if !errors.Is(err, kafkaconn.ErrAuthorization) || !strings.Contains(err.Error(), "principal nobody may not describe topic "+requests) {
		t.Fatalf("Check as nobody: %v", err)
	}
}

func TestWrongPasswordAndUntrustedCAFailFast(t *testing.T) {
	s := stack(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		cfg   kafkaconn.Config
		kind  error
		words string
	}{
		{"wrong scram password", scram(s, kafkaconn.MechanismSCRAMSHA512, testenv.PrincipalWorker, testenv.PrincipalNobody),
			kafkaconn.ErrAuthentication, "SASL authentication as worker failed (wrong password or mechanism"},
		{"untrusted CA, SASL_SSL", func() kafkaconn.Config {
			c := scram(s, kafkaconn.MechanismSCRAMSHA512, testenv.PrincipalWorker, testenv.PrincipalWorker)
			c.TLSCA = s.ACMETLSCA
			return c
		}(), kafkaconn.ErrUntrustedCertificate, "the broker's certificate is not signed by -kafka-tls-ca " + s.ACMETLSCA},
		{"untrusted CA, mTLS", func() kafkaconn.Config {
			c := mtls(s, testenv.PrincipalWorker)
			c.TLSCA = s.ACMETLSCA
			return c
		}(), kafkaconn.ErrUntrustedCertificate, "not signed by -kafka-tls-ca " + s.ACMETLSCA},
		{"no client certificate", func() kafkaconn.Config {
			c := mtls(s, testenv.PrincipalWorker)
			c.TLSCert, c.TLSKey = "", ""
			return c
		}(), kafkaconn.ErrTLSRefused, "-kafka-tls-cert"},
		{"plaintext to SASL_SSL", kafkaconn.Config{Brokers: s.KafkaSASLBrokers, Timeout: 5 * time.Second}, kafkaconn.ErrNotKafka, "TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, tc.cfg)
			start := time.Now()
			err := c.Check(ctx)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Check took %v", d)
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.words) || !strings.Contains(err.Error(), tc.cfg.Brokers[0]) {
				t.Fatalf("Check: %v\nwant %v, %q and the broker", err, tc.kind, tc.words)
			}
		})
	}
}
