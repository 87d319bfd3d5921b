package events

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"
	"time"
)

// testTime is the ce_time of every sample.
var testTime = time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)

const testSource = "//certfleet/test"

// testChain is a public test chain: a leaf for example.com and
// www.example.com issued by a throwaway intermediate.
func testChain(t testing.TB) (string, *x509.Certificate) {
	t.Helper()
	b, err := os.ReadFile("testdata/chain.pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), leaf
}

// samplePayloads returns one valid payload of every type, in Types() order.
func samplePayloads(t testing.TB) []Payload {
	chain, leaf := testChain(t)
	sans := []string{"example.com", "www.example.com"}
	replaces := "AQIDBA.AEo_nC4bDY5_altMPS4fCpuMxw"
	return []Payload{
		&IssuanceRequest{
			RequestID:      "req-0001",
			SANs:           sans,
			Tenant:         "tenant-a",
			KeyType:        KeyECDSAP256,
			CA:             "letsencrypt",
			Profile:        "tlsserver",
			Priority:       5,
			NotBefore:      time.Date(2026, 1, 2, 4, 0, 0, 0, time.UTC),
			Reason:         ReasonRenewal,
			Replaces:       replaces,
			IdempotencyKey: "upstream-42",
			Attempt:        0,
		},
		&CertObtained{
			RequestID: "req-0001",
			SANs:      sans,
			Tenant:    "tenant-a",
			CA:        "letsencrypt",
			Serial:    leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore,
			NotAfter:  leaf.NotAfter,
			ChainPEM:  chain,
			ARICertID: ARICertID(leaf),
			Issuer:    leaf.Issuer.String(),
			Replaces:  replaces,
			Attempts:  1,
		},
		&CertFailed{
			RequestID:     "req-0001",
			SANs:          sans,
			Tenant:        "tenant-a",
			CA:            "https://acme-staging-v02.api.letsencrypt.org/directory",
			ProblemType:   "urn:ietf:params:acme:error:rateLimited",
			Detail:        "too many certificates already issued for \"example.com\"",
			Retryable:     true,
			NextAttemptAt: time.Date(2026, 1, 2, 5, 0, 0, 0, time.UTC),
			Attempt:       2,
		},
		&IssuanceDeferred{
			RequestID: "req-0001",
			SANs:      sans,
			Tenant:    "tenant-a",
			CA:        "letsencrypt",
			Limit:     "CertificatesPerDomain",
			LimitKey:  "example.com",
			RetryAt:   time.Date(2026, 1, 2, 6, 0, 0, 0, time.UTC),
			Attempt:   1,
		},
		&RenewalScheduled{
			RequestID:   "renew-7f3a",
			SANs:        sans,
			Tenant:      "tenant-a",
			CA:          "letsencrypt",
			Replaces:    replaces,
			RenewAt:     time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
			Basis:       BasisARI,
			WindowStart: time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC),
			WindowEnd:   time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC),
		},
		&CertRevoked{
			RequestID:            "req-0001",
			SANs:                 sans,
			Tenant:               "tenant-a",
			CA:                   "letsencrypt",
			Serial:               leaf.SerialNumber.Text(16),
			ARICertID:            ARICertID(leaf),
			ReasonCode:           RevokeKeyCompromise,
			Reason:               "keyCompromise",
			RevokedAt:            time.Date(2026, 1, 2, 7, 0, 0, 0, time.UTC),
			ReplacementRequested: true,
			ReplacementRequestID: "reissue-0001",
		},
	}
}

// sampleEvents wraps samplePayloads in events.
func sampleEvents(t testing.TB) []Event {
	var out []Event
	for _, p := range samplePayloads(t) {
		e, err := New(testSource, testTime, p)
		if err != nil {
			t.Fatalf("New(%s): %v", p.EventType(), err)
		}
		out = append(out, e)
	}
	return out
}
