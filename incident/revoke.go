package incident

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/certfleet/certfleet/acmeissuer"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/seal"
)

// EmergencyPriority is the priority of replacement requests: the highest a
// request may carry (events.MaxPriority), the emergency lane.
const EmergencyPriority = events.MaxPriority

// CARevoker revokes certificates at one CA (acmeissuer.Revoker).
type CARevoker interface {
	// Revoke asks the CA to revoke r.Cert, signed with the tenant's
	// account or r.CertKey; alreadyRevoked is success. It blocks until
	// the CA answers or ctx ends.
	Revoke(ctx context.Context, r acmeissuer.Revocation) (acmeissuer.RevokeResult, error)
}

// Publisher publishes events (events.Producer): requests to the requests
// topic, every other type to the certificate events topic. It returns once
// every event is written or ctx ends.
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Event) error
}

// ReplacementID is the request id of c's replacement: the same for every
// run, so revoking or reissuing c twice publishes one request (the workers'
// claim keeps the second from ordering again).
func ReplacementID(c Certificate) string {
	h := sha256.Sum256([]byte(c.CA + "\n" + c.Serial + "\n" + c.RequestID))
	return "reissue-" + hex.EncodeToString(h[:16])
}

// Replacement is the issuance request that replaces c: its SAN set, tenant,
// CA, key type and profile, reason reissue, in the emergency lane, naming
// c as the certificate it replaces.
func Replacement(c Certificate) *events.IssuanceRequest {
	return &events.IssuanceRequest{RequestID: ReplacementID(c), SANs: c.SANs, Tenant: c.Tenant, KeyType: c.KeyType,
		CA: c.CA, Profile: c.Profile, Priority: EmergencyPriority, Reason: events.ReasonReissue, Replaces: c.ARICertID}
}

// RevokeConfig configures Revoke.
type RevokeConfig struct {
	// CAs are the revokers by CA name, as a certificate's cert_obtained
	// names its CA. Required.
	CAs map[string]CARevoker
	// Publisher publishes cert.revoked and replacements. Required.
	Publisher Publisher
	// Keys, optional, opens certificate keys (the fleet keyring), so a
	// certificate whose tenant has no account at its CA can be revoked
	// with its own key.
	Keys seal.Sealer
	// Reason is the RFC 5280 reason sent to the CA and reported.
	Reason events.RevocationReason
	// Replace publishes a replacement (Replacement) for every certificate
	// revoked, before its cert.revoked.
	Replace bool
	// Source is the events' ce_source. Default "//certfleet/cli".
	Source string
	// Clock stamps revoked_at. Default: the wall clock.
	Clock clock.Clock
}

// Revoked is what became of one certificate.
type Revoked struct {
	Certificate
	// SignedWith is acmeissuer.SignedWithAccount or SignedWithCertKey.
	SignedWith     string
	AlreadyRevoked bool
	RevokedAt      time.Time
	// ReplacementID is the replacement's request id, when one was published.
	ReplacementID string
	// Err is why the certificate was not revoked, or revoked and not
	// (wholly) reported: running again revokes nothing twice (the CA says
	// alreadyRevoked) and publishes the same events.
	Err error
}

// Revoke revokes certs one after the other, calling each with every
// outcome, and returns the number that failed. It stops early only when
// ctx ends.
func Revoke(ctx context.Context, cfg RevokeConfig, certs []Certificate, each func(Revoked)) (failed int, err error) {
	if len(cfg.CAs) == 0 || cfg.Publisher == nil {
		return 0, errors.New("incident: RevokeConfig needs CAs and a Publisher")
	}
	if !cfg.Reason.Revokes() {
		return 0, fmt.Errorf("incident: reason %d is not a revocation reason", cfg.Reason)
	}
	if cfg.Source == "" {
		cfg.Source = "//certfleet/cli"
	}
	clk := clock.Or(cfg.Clock)
	for _, c := range certs {
		if err := ctx.Err(); err != nil {
			return failed, err
		}
		r := revokeOne(ctx, cfg, clk, c)
		if r.Err != nil {
			failed++
		}
		each(r)
	}
	return failed, nil
}

func revokeOne(ctx context.Context, cfg RevokeConfig, clk clock.Clock, c Certificate) Revoked {
	out := Revoked{Certificate: c}
	rv, ok := cfg.CAs[c.CA]
	if !ok {
		out.Err = fmt.Errorf("certificate %s was issued by CA %q, which is not configured (--ca NAME=URL)", c.Serial, c.CA)
		return out
	}
	leaf, err := c.Leaf()
	if err != nil {
		out.Err = err
		return out
	}
	var key crypto.Signer
	var keyErr error
	if cfg.Keys != nil {
		key, keyErr = seal.OpenPrivateKey(ctx, cfg.Keys, c.SealedKey, seal.AAD(seal.PurposeCertKey, c.Identity, c.RequestID))
	}
	res, err := rv.Revoke(ctx, acmeissuer.Revocation{Tenant: c.Tenant, Cert: leaf, Reason: int(cfg.Reason), CertKey: key})
	if err != nil {
		if keyErr != nil {
			err = fmt.Errorf("%w (and its key did not open: %v)", err, keyErr)
		}
		out.Err = err
		return out
	}
	out.SignedWith, out.AlreadyRevoked, out.RevokedAt = res.SignedWith, res.AlreadyRevoked, clk.Now().UTC()
	var evs []events.Event
	ev := events.CertRevoked{RequestID: c.RequestID, SANs: c.SANs, Tenant: c.Tenant, CA: c.CA, Serial: c.Serial,
		ARICertID: c.ARICertID, ReasonCode: cfg.Reason, RevokedAt: out.RevokedAt}
	if cfg.Replace {
		req, err := events.New(cfg.Source, out.RevokedAt, Replacement(c))
		if err != nil {
			out.Err = fmt.Errorf("revoked; its replacement request is invalid: %w", err)
			return out
		}
		evs = append(evs, req)
		out.ReplacementID = req.Data.(*events.IssuanceRequest).RequestID
		ev.ReplacementRequested, ev.ReplacementRequestID = true, out.ReplacementID
	}
	revoked, err := events.NewCertRevoked(cfg.Source, ev)
	if err != nil {
		out.Err = fmt.Errorf("revoked; its cert.revoked is invalid: %w", err)
		return out
	}
	evs = append(evs, revoked)
	// The replacement first: a reader of cert.revoked may look for it.
	for _, e := range evs {
		if err := cfg.Publisher.Publish(ctx, e); err != nil {
			out.Err = fmt.Errorf("revoked; publishing %s: %w", e.Type(), err)
			return out
		}
	}
	return out
}
