package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/scheduler"
	"github.com/certfleet/certfleet/testenv"
)

// Issue 16, against the real stack: a writer on the events topic cannot make
// certificates expire. A scheduler process (run, on testenv's Kafka and
// PostgreSQL) consumes a forged cert_obtained (a self-signed certificate
// until 2099 that agrees with itself, naming an https CA URL of its own) and
// an issuance_deferred asking to wait until year 9999: the managed row is
// unchanged, both records are in the dead-letter topic with the reason, the
// metrics count them, and the server the forged event names gets no
// request. The genuine outcome behind them, as a worker stored it, is then
// recorded, although it has the forged event's ce_id (one cert_obtained per
// request id): the scheduler's subscriber does not skip records by id.
func TestForgedEventsDeadLettered(t *testing.T) {
	s := testenv.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	url, d := migratedDatabase(t, ctx)
	sfx := randSuffix()
	topics := events.Topics{Requests: "fg.req." + sfx, Events: "fg.events." + sfx, DLQ: "fg.dlq." + sfx}
	for _, tp := range []string{topics.Requests, topics.Events, topics.DLQ} {
		if err := testenv.CreateTopic(ctx, s.KafkaBrokers, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	var hits atomic.Int64
	named := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	defer named.Close()

	// A managed certificate with its current certificate recorded, renewal
	// planned in 40 days, and the worker's claim of its renewal job.
	m, err := scheduler.Normalize(scheduler.Spec{SANs: []string{"forged.example.com"}, Tenant: "t", CA: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	inv := scheduler.NewInventory(d, nil)
	if _, err := inv.Manage(ctx, m); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	planned := now.Add(40 * 24 * time.Hour)
	if _, err := d.Pool().Exec(ctx, `UPDATE managed_certificates SET cert_ari_id = 'AQID.AQ', cert_not_before = $2,
		cert_not_after = $3, next_renewal_at = $4, planned_at = $4, renewal_basis = 'lifetime', request_id = 'req-renewal'
		WHERE identity = $1`, m.Identity, now.Add(-50*24*time.Hour), now.Add(40*24*time.Hour), planned); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool().Exec(ctx, `INSERT INTO issuance_requests (request_id, identity, state, owner, owner_until, attempts)
		VALUES ('req-renewal', $1, 'ordering', 'w', now() + interval '1 minute', 1)`, m.Identity); err != nil {
		t.Fatal(err)
	}
	before, err := inv.Get(ctx, m.Identity)
	if err != nil {
		t.Fatal(err)
	}

	cfg, err := parseConfig([]string{"-kafka-brokers", strings.Join(s.KafkaBrokers, ","), "-database-url", url,
		"-topic-requests", topics.Requests, "-topic-events", topics.Events, "-topic-dlq", topics.DLQ,
		"-group", "fg-" + sfx, "-listen", "127.0.0.1:0", "-tick-interval", "100ms", "-budget", "100/1s",
		"-ca", "lab=https://127.0.0.1:1/dir", "-shutdown-timeout", "10s"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	addrc, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- run(rctx, cfg, slog.New(slog.DiscardHandler), addrc) }()
	defer func() {
		rcancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler: %v", err)
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatal(err)
	}

	producer, err := events.NewProducer(events.ProducerConfig{Brokers: s.KafkaBrokers, Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	forged := forgedObtained(t, "req-renewal", m.SANs, named.URL+"/dir")
	y9999 := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	stalled := &events.IssuanceDeferred{RequestID: "req-renewal", SANs: m.SANs, Tenant: "t", CA: named.URL + "/dir",
		Limit: "CertificatesPerDomain", LimitKey: "example.com", RetryAt: y9999, Attempt: 1}
	publish(t, ctx, producer, forged, stalled)

	dlq := map[string]string{} // ce_type -> certfleet_dlq_reason
	poll(t, ctx, "both records in the dead-letter topic", func() bool {
		msgs, err := events.ReadTopic(ctx, nil, s.KafkaBrokers, topics.DLQ, 0)
		if err != nil {
			return false
		}
		for _, msg := range msgs {
			dlq[header(msg, "ce_type")] = header(msg, "certfleet_dlq_reason")
		}
		return len(dlq) == 2
	})
	for typ, want := range map[string]string{
		"dev.certfleet.cert.obtained":     `event refused (unmatched): cert_obtained for request "req-renewal" is not the certificate a worker stored: none is stored`,
		"dev.certfleet.issuance.deferred": "retry_at: invalid value: 9999-12-31T00:00:00Z is more than 30 days after now",
	} {
		if !strings.Contains(dlq[typ], want) {
			t.Errorf("%s dead-lettered with reason %q, want it to contain %q", typ, dlq[typ], want)
		}
	}
	if after, _ := inv.Get(ctx, m.Identity); !after.NextRenewalAt.Equal(before.NextRenewalAt) || after.CertARIID != before.CertARIID ||
		!after.CertNotAfter.Equal(before.CertNotAfter) || after.RequestID != before.RequestID {
		t.Fatalf("a forged event moved the renewal:\nbefore %+v\nafter  %+v", before, after)
	}
	metrics := get(addr, "/metrics")
	if got := metricValue(metrics, "certfleet_scheduler_events_dead_lettered_total"); got != 2 {
		t.Errorf("events_dead_lettered_total = %v, want 2", got)
	}
	for _, series := range []string{`certfleet_scheduler_events_refused_total{reason="unmatched",type="dev.certfleet.cert.obtained"}`,
		`certfleet_scheduler_events_refused_total{reason="too_far_ahead",type="dev.certfleet.issuance.deferred"}`} {
		if got := metricValue(metrics, series); got != 1 {
			t.Errorf("%s = %v, want 1:\n%s", series, got, grepLines(metrics, "certfleet_scheduler_events"))
		}
	}

	// The worker's certificate, as it stored it before publishing, is
	// recorded: the refusals above did not stop the consumer (and the record
	// is behind them on the one partition).
	genuine := selfSigned(t, "req-renewal", m.SANs, named.URL+"/dir", 0x6a, now.Add(89*24*time.Hour))
	if _, err := d.Pool().Exec(ctx, `INSERT INTO issued_certificates (id, identity, request_id, serial, ari_cert_id, not_before,
		not_after, chain_pem, sealed_key) VALUES ($1, $2, 'req-renewal', $3, $4, $5, $6, '', '\x00')`,
		uuid.New(), m.Identity, genuine.Serial, genuine.ARICertID, genuine.NotBefore, genuine.NotAfter); err != nil {
		t.Fatal(err)
	}
	publish(t, ctx, producer, genuine)
	poll(t, ctx, "the stored certificate recorded", func() bool {
		row, err := inv.Get(ctx, m.Identity)
		return err == nil && row.CertARIID == genuine.ARICertID && row.RequestID == ""
	})
	if row, _ := inv.Get(ctx, m.Identity); !row.CertNotAfter.Equal(genuine.NotAfter) || !row.NextRenewalAt.Before(genuine.NotAfter) {
		t.Fatalf("after the stored certificate: %+v", row)
	}
	if hits.Load() != 0 {
		t.Fatalf("%d requests to the CA URL the events named", hits.Load())
	}
}

// forgedObtained is a cert_obtained that agrees with itself (events' checks
// pass: leaf serial, dates and SANs equal the fields) for a self-signed
// certificate valid until 2099.
func forgedObtained(t *testing.T, requestID string, sans []string, ca string) *events.CertObtained {
	return selfSigned(t, requestID, sans, ca, 0x5eed, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC))
}

// selfSigned is a cert_obtained of a self-signed certificate for sans with
// that serial, valid from an hour ago until na.
func selfSigned(t *testing.T, requestID string, sans []string, ca string, serial int64, na time.Time) *events.CertObtained {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	nb := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: sans[0]}, DNSNames: sans,
		NotBefore: nb, NotAfter: na, AuthorityKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &events.CertObtained{RequestID: requestID, SANs: sans, Tenant: "t", CA: ca, Serial: leaf.SerialNumber.Text(16),
		NotBefore: nb, NotAfter: na, ChainPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		ARICertID: events.ARICertID(leaf), Issuer: leaf.Issuer.String(), Attempts: 1}
}

func publish(t *testing.T, ctx context.Context, p *events.Producer, ps ...events.Payload) {
	t.Helper()
	var evs []events.Event
	for _, pl := range ps {
		ev, err := events.New("//forger", time.Now(), pl)
		if err != nil {
			t.Fatalf("%T does not validate: %v", pl, err)
		}
		evs = append(evs, ev)
	}
	if err := p.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
}
