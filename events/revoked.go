package events

import (
	"fmt"
	"strconv"
	"time"
)

// RevocationReason is an RFC 5280 CRLReason code (section 5.3.1), the
// reason an ACME revocation request carries (RFC 8555 section 7.6).
type RevocationReason int

// The RFC 5280 reason codes. 7 is not assigned.
const (
	RevokeUnspecified          RevocationReason = 0
	RevokeKeyCompromise        RevocationReason = 1
	RevokeCACompromise         RevocationReason = 2
	RevokeAffiliationChanged   RevocationReason = 3
	RevokeSuperseded           RevocationReason = 4
	RevokeCessationOfOperation RevocationReason = 5
	RevokeCertificateHold      RevocationReason = 6
	RevokeRemoveFromCRL        RevocationReason = 8
	RevokePrivilegeWithdrawn   RevocationReason = 9
	RevokeAACompromise         RevocationReason = 10
)

// reasonNames are the RFC 5280 ASN.1 names, indexed by code; "" is unassigned.
var reasonNames = [...]string{
	RevokeUnspecified:          "unspecified",
	RevokeKeyCompromise:        "keyCompromise",
	RevokeCACompromise:         "cACompromise",
	RevokeAffiliationChanged:   "affiliationChanged",
	RevokeSuperseded:           "superseded",
	RevokeCessationOfOperation: "cessationOfOperation",
	RevokeCertificateHold:      "certificateHold",
	RevokeRemoveFromCRL:        "removeFromCRL",
	RevokePrivilegeWithdrawn:   "privilegeWithdrawn",
	RevokeAACompromise:         "aACompromise",
}

// String is the RFC 5280 name ("keyCompromise"), or "reason(N)" for a code
// RFC 5280 does not assign.
func (r RevocationReason) String() string {
	if r >= 0 && int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Revokes reports whether r can be the reason of a cert.revoked event: an
// assigned RFC 5280 code that revokes for good. certificateHold (6) is a
// suspension the CA/Browser Forum's Baseline Requirements forbid for TLS
// certificates, and removeFromCRL (8) undoes one; neither is a revocation.
func (r RevocationReason) Revokes() bool {
	return r >= 0 && int(r) < len(reasonNames) && reasonNames[r] != "" &&
		r != RevokeCertificateHold && r != RevokeRemoveFromCRL
}

// ParseRevocationReason reads a reason as its RFC 5280 name
// ("keyCompromise", matched exactly) or its code ("1"). It accepts only
// reasons that revoke (Revokes).
func ParseRevocationReason(s string) (RevocationReason, error) {
	r := RevocationReason(-1)
	if n, err := strconv.Atoi(s); err == nil {
		r = RevocationReason(n)
	} else {
		for code, name := range reasonNames {
			if name != "" && name == s {
				r = RevocationReason(code)
			}
		}
	}
	if !r.Revokes() {
		return 0, fmt.Errorf("revocation reason %s: want one of %s", quote(s), revokingReasons())
	}
	return r, nil
}

// revokingReasons lists the accepted reasons as "0 (unspecified), 1 (...)".
func revokingReasons() string {
	var out string
	for code := range reasonNames {
		if r := RevocationReason(code); r.Revokes() {
			if out != "" {
				out += ", "
			}
			out += strconv.Itoa(code) + " (" + r.String() + ")"
		}
	}
	return out
}

// CertRevoked reports that a certificate was revoked at its CA. Published by
// `certfleet revoke` to the certificate events topic, like CertObtained,
// after the CA accepted the revocation. Its event id is stable per
// certificate: a re-published revocation has the same id.
type CertRevoked struct {
	// RequestID is the request the revoked certificate was obtained for (the
	// request_id of its cert.obtained), which names the certificate.
	RequestID string   `json:"request_id"`
	SANs      []string `json:"sans"`
	Tenant    string   `json:"tenant"`
	// CA is the CA that issued the certificate and revoked it.
	CA string `json:"ca"`
	// Serial is the certificate's serial number, lower-case hex without
	// leading zeros (as in CertObtained).
	Serial string `json:"serial"`
	// ARICertID is the revoked certificate's ARI id (RFC 9773 section 4.1);
	// a replacement's IssuanceRequest carries it as Replaces.
	ARICertID string `json:"ari_cert_id"`
	// ReasonCode is the RFC 5280 reason sent to the CA, and Reason its
	// RFC 5280 name (ReasonCode.String()); the two must agree.
	ReasonCode RevocationReason `json:"reason_code"`
	Reason     string           `json:"reason"`
	// RevokedAt is when the CA accepted the revocation.
	RevokedAt time.Time `json:"revoked_at"`
	// ReplacementRequested says whether a replacement certificate was
	// requested; ReplacementRequestID, the request_id of that
	// IssuanceRequest (reason "reissue"), is set exactly when it was.
	ReplacementRequested bool   `json:"replacement_requested"`
	ReplacementRequestID string `json:"replacement_request_id,omitempty"`
}

func (*CertRevoked) EventType() Type   { return TypeCertRevoked }
func (p *CertRevoked) Names() []string { return p.SANs }
func (p *CertRevoked) idName() string  { return "" } // one revocation per certificate

// NewCertRevoked builds the cert.revoked event of p, published by source
// (e.g. "//certfleet/cli"). An empty Reason is filled with ReasonCode's
// RFC 5280 name; ce_time is RevokedAt. The event is validated like New's.
func NewCertRevoked(source string, p CertRevoked) (Event, error) {
	if p.Reason == "" {
		p.Reason = p.ReasonCode.String()
	}
	return New(source, p.RevokedAt, &p)
}

// Validate implements Payload.
func (p *CertRevoked) Validate() error {
	var c checker
	c.check("request_id", checkRequestID(p.RequestID))
	checkSANs(&c, p.SANs)
	c.check("tenant", checkTenant(p.Tenant))
	c.check("ca", checkCA(p.CA))
	c.check("serial", checkSerial(p.Serial))
	c.check("ari_cert_id", checkARI(p.ARICertID))
	if !p.ReasonCode.Revokes() {
		c.check("reason_code", fmt.Errorf("%w: %d is not one of %s", ErrInvalidField, p.ReasonCode, revokingReasons()))
	}
	if p.Reason == "" {
		c.check("reason", ErrMissingField)
	} else if p.Reason != p.ReasonCode.String() {
		c.check("reason", fmt.Errorf("%w: %s is not the name of reason_code %d (%s)", ErrInvalidField, quote(p.Reason), p.ReasonCode, p.ReasonCode))
	}
	c.check("revoked_at", requiredTime(p.RevokedAt))
	c.check("replacement_request_id", checkRequestIDOpt(p.ReplacementRequestID))
	if p.ReplacementRequested != (p.ReplacementRequestID != "") {
		c.check("replacement_request_id", fmt.Errorf("%w: set exactly when replacement_requested is true", ErrInvalidField))
	}
	return c.err
}
