package testenv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/testenv"
)

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Two members of one consumer group share a topic's partitions, and between
// them consume every produced message exactly once when each commits what it
// processed.
func TestKafkaConsumerGroupTwoMembers(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	topic := "certfleet.smoke." + randomSuffix()
	if err := testenv.CreateTopic(ctx, s.KafkaBrokers, topic, 4); err != nil {
		t.Fatal(err)
	}
	const n = 400
	w := &kafka.Writer{Addr: kafka.TCP(s.KafkaBrokers...), Topic: topic, RequiredAcks: kafka.RequireAll,
		Balancer: &kafka.Hash{}, BatchTimeout: time.Millisecond}
	defer w.Close()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte(fmt.Sprint(i)), Value: []byte(fmt.Sprint(i))}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("producing: %v", err)
	}

	group := "certfleet-smoke-" + randomSuffix()
	var mu sync.Mutex
	seen := map[string]int{}
	perMember := [2]map[int]bool{{}, {}}
	var wg sync.WaitGroup
	cctx, stop := context.WithCancel(ctx)
	for m := 0; m < 2; m++ {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.KafkaBrokers, Topic: topic, GroupID: group,
			StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
		defer r.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := r.FetchMessage(cctx)
				if err != nil {
					return // cancelled
				}
				mu.Lock()
				seen[string(msg.Value)]++
				perMember[m][msg.Partition] = true
				done := len(seen) == n
				mu.Unlock()
				if err := r.CommitMessages(ctx, msg); err != nil {
					t.Errorf("member %d commit: %v", m, err)
				}
				if done {
					stop()
				}
			}
		}()
	}
	wg.Wait()
	stop()
	if len(seen) != n {
		t.Fatalf("consumed %d distinct messages, want %d", len(seen), n)
	}
	for v, c := range seen {
		if c != 1 {
			t.Errorf("message %s consumed %d times", v, c)
		}
	}
	// Both members took part: the group really balanced the partitions.
	if len(perMember[0]) == 0 || len(perMember[1]) == 0 {
		t.Errorf("partitions per member = %d and %d; want both members assigned", len(perMember[0]), len(perMember[1]))
	}
}

// challtestsrvSolver solves HTTP-01 by having pebble-challtestsrv serve the
// key authorization on the port Pebble validates (real HTTP validation).
type challtestsrvSolver struct{ srv testenv.ChallTestSrv }

func (s challtestsrvSolver) Present(ctx context.Context, ch acme.Challenge) error {
	return s.srv.AddHTTP01(ctx, ch.Token, ch.KeyAuthorization)
}

func (s challtestsrvSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return s.srv.DelHTTP01(ctx, ch.Token)
}

// newACMEClient trusts Pebble's serving CA, registers a fresh account and
// solves HTTP-01 with solver.
func newACMEClient(ctx context.Context, t *testing.T, s testenv.Settings, solver acmez.Solver) (acmez.Client, acme.Account) {
	t.Helper()
	tr, err := s.ACMETransport()
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	client := acmez.Client{
		Client:           &acme.Client{Directory: s.ACMEDirectory, HTTPClient: hc, PollInterval: 10 * time.Millisecond},
		ChallengeSolvers: map[string]acmez.Solver{acme.ChallengeTypeHTTP01: solver},
	}
	accountKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	account, err := client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:smoke@certfleet.test"}, TermsOfServiceAgreed: true, PrivateKey: accountKey})
	if err != nil {
		t.Fatalf("creating account: %v", err)
	}
	if account.Status != acme.StatusValid {
		t.Fatalf("account status %q", account.Status)
	}
	return client, account
}

// An ACME account is created and a certificate obtained from Pebble through
// acmez with HTTP-01 validated over the network; the chain verifies against
// Pebble's current root.
func TestPebbleObtainCertificateHTTP01(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, account := newACMEClient(ctx, t, s, challtestsrvSolver{testenv.ChallTestSrv{URL: s.ChallTestSrvURL}})

	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	name := "smoke-" + randomSuffix() + ".certfleet.test"
	csr, err := acmez.NewCSR(certKey, []string{name})
	if err != nil {
		t.Fatal(err)
	}
	params, err := acmez.OrderParametersFromCSR(account, csr)
	if err != nil {
		t.Fatal(err)
	}
	params.Profile = testenv.PebbleShortProfile
	certs, err := client.ObtainCertificate(ctx, params)
	if err != nil {
		t.Fatalf("obtaining certificate: %v", err)
	}
	leaf, inter := parseChain(t, certs[0].ChainPEM)
	rootPEM, err := os.ReadFile(s.PebbleRoot)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("no root in %s", s.PebbleRoot)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("chain does not verify against Pebble's root: %v", err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(certKey.Public()) {
		t.Error("certificate is not for our key")
	}
	// The named profile was honoured: 6-day lifetime, not 90 days.
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 7*24*time.Hour {
		t.Errorf("lifetime %v; want the %s profile's 6 days", life, testenv.PebbleShortProfile)
	}
}

type silentSolver struct{}

func (silentSolver) Present(context.Context, acme.Challenge) error { return nil }
func (silentSolver) CleanUp(context.Context, acme.Challenge) error { return nil }

// The validation is real: when nobody serves the key authorization, Pebble
// refuses the order (unless the stack runs with CERTFLEET_PEBBLE_ALWAYS_VALID).
func TestPebbleRejectsUnsolvedHTTP01(t *testing.T) {
	s := testenv.Require(t)
	if os.Getenv(testenv.EnvPebbleAlwaysValid) == "1" {
		t.Skip("Pebble runs with PEBBLE_VA_ALWAYS_VALID: every challenge passes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, account := newACMEClient(ctx, t, s, silentSolver{})
	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := client.ObtainCertificateForSANs(ctx, account, certKey, []string{"unsolved-" + randomSuffix() + ".certfleet.test"})
	if err == nil {
		t.Fatal("obtained a certificate without answering the challenge")
	}
	t.Logf("refused as expected: %v", err)
}

func parseChain(t *testing.T, chain []byte) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chain; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) < 2 {
		t.Fatalf("chain has %d certificates, want leaf and intermediate", len(certs))
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	return certs[0], inter
}
