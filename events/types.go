package events

import (
	"strconv"
	"time"
)

// Type is a CloudEvents type attribute (header ce_type). Only the constants
// below exist; Decode rejects any other value with ErrUnknownType.
type Type string

// The message types of schema version 1.
const (
	TypeIssuanceRequested Type = "dev.certfleet.issuance.requested"
	TypeCertObtained      Type = "dev.certfleet.cert.obtained"
	TypeCertFailed        Type = "dev.certfleet.cert.failed"
	TypeIssuanceDeferred  Type = "dev.certfleet.issuance.deferred"
	TypeRenewalScheduled  Type = "dev.certfleet.renewal.scheduled"
	TypeCertRevoked       Type = "dev.certfleet.cert.revoked"
)

// Types lists every message type, in a fixed order.
func Types() []Type {
	return []Type{TypeIssuanceRequested, TypeCertObtained, TypeCertFailed, TypeIssuanceDeferred, TypeRenewalScheduled, TypeCertRevoked}
}

// SchemaVersion is the version of the JSON Schemas this package writes.
const SchemaVersion = "v1"

// schemaBase prefixes every schema URI; the full URI is
// schemaBase + version + "/" + short name + ".json".
const schemaBase = "https://certfleet.dev/schema/events/"

// short is the type without the "dev.certfleet." prefix, e.g. "cert.obtained".
func (t Type) short() string { return string(t)[len("dev.certfleet."):] }

// SchemaURI is the JSON Schema $id for t in schema version v1, sent as the
// ce_dataschema header. The file is schema/events/v1/<short>.json.
func (t Type) SchemaURI() string {
	if wt, ok := wireTypes[t]; ok {
		return wt.schema
	}
	return t.schemaURI()
}

func (t Type) schemaURI() string { return schemaBase + SchemaVersion + "/" + t.short() + ".json" }

// Valid reports whether t is one of the defined types.
func (t Type) Valid() bool {
	_, ok := registry[t]
	return ok
}

// KeyType is the private key algorithm a certificate is requested with.
type KeyType string

// Key types. The key itself never leaves the worker and the database.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyRSA4096   KeyType = "rsa-4096"
)

var keyTypes = []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}

// Reason says why an issuance was requested.
type Reason string

// Reasons.
const (
	ReasonNew     Reason = "new"     // first certificate for this SAN set
	ReasonRenewal Reason = "renewal" // scheduled renewal of an existing certificate
	ReasonReissue Reason = "reissue" // replacement out of schedule (key compromise, revocation, config change)
)

var reasons = []Reason{ReasonNew, ReasonRenewal, ReasonReissue}

// RenewalBasis says how a renewal time was chosen.
type RenewalBasis string

// Renewal bases.
const (
	BasisARI      RenewalBasis = "ari"      // inside the CA's ACME Renewal Information window
	BasisLifetime RenewalBasis = "lifetime" // at about two thirds of the certificate lifetime
)

var bases = []RenewalBasis{BasisARI, BasisLifetime}

// Limits enforced on every message, by Encode and Decode alike.
const (
	MaxValueSize  = 64 << 10 // bytes of the record value
	MaxSANs       = 100      // names per certificate (Let's Encrypt's limit)
	MaxHeaders    = 64       // headers per record
	MaxHeaderSize = 1024     // bytes per header value
	MaxPriority   = 9
)

// Payload is the body of one message. It is implemented only by the types in
// this package (*IssuanceRequest, *CertObtained, *CertFailed,
// *IssuanceDeferred, *RenewalScheduled, *CertRevoked); handlers switch on the
// concrete type.
type Payload interface {
	// EventType is the ce_type of the message.
	EventType() Type
	// Names is the SAN list; the record key is Identity(Names()).
	Names() []string
	// Validate checks every field and returns a *FieldError naming the first
	// bad one.
	Validate() error
	// idName is the outcome part of the stable event id.
	idName() string
}

// IssuanceRequest asks the issuer workers for a certificate. Published by
// upstream systems and by the scheduler to the requests topic, and re-published
// to the retry topic with a later NotBefore and a higher Attempt when deferred.
type IssuanceRequest struct {
	// RequestID identifies this request; every outcome event carries it.
	RequestID string `json:"request_id"`
	// SANs are canonical DNS names (see package names), 1 to MaxSANs, no
	// duplicates. The first is used as the subject common name.
	SANs   []string `json:"sans"`
	Tenant string   `json:"tenant"`
	// KeyType of the certificate's new private key.
	KeyType KeyType `json:"key_type"`
	// CA is a configured CA name ("letsencrypt") or an https ACME directory
	// URL. Workers accept only CAs in their configuration.
	CA string `json:"ca"`
	// Profile is the ACME profile to request (draft-aaron-acme-profiles), empty
	// for the CA's default.
	Profile string `json:"profile,omitempty"`
	// Priority orders work inside the pipeline: 0 (lowest) to 9.
	Priority int `json:"priority"`
	// NotBefore: do not start the order before this time (zero: now).
	NotBefore time.Time `json:"not_before,omitzero"`
	Reason    Reason    `json:"reason"`
	// Replaces is the ARI certificate id (RFC 9773: base64url(AKI) "."
	// base64url(serial)) of the certificate this one replaces; empty for new.
	Replaces string `json:"replaces,omitempty"`
	// IdempotencyKey, when set, is the upstream system's key: two requests
	// with the same tenant and key are the same intent.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Attempt counts re-publications of this request after deferrals: 0 for
	// the first publication.
	Attempt int `json:"attempt"`
}

// CertObtained reports a certificate issued for a request. It carries the
// public chain only.
type CertObtained struct {
	RequestID string   `json:"request_id"`
	SANs      []string `json:"sans"`
	Tenant    string   `json:"tenant"`
	CA        string   `json:"ca"`
	// Serial is the leaf's serial number in lower-case hex without leading
	// zeros, as printed by big.Int.Text(16).
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// ChainPEM is the leaf followed by its intermediates, PEM CERTIFICATE
	// blocks only. Decode checks that the leaf matches Serial, NotBefore,
	// NotAfter and SANs.
	ChainPEM string `json:"chain_pem"`
	// ARICertID is this certificate's ARI id (RFC 9773 section 4.1).
	ARICertID string `json:"ari_cert_id"`
	// Issuer is the issuing CA certificate's subject, as x509 prints it.
	Issuer string `json:"issuer"`
	// Replaces is the ARI id of the certificate this one replaces, if any.
	Replaces string `json:"replaces,omitempty"`
	// Attempts is how many order attempts it took (1 or more).
	Attempts int `json:"attempts"`
}

// CertFailed reports that an attempt for a request failed.
type CertFailed struct {
	RequestID string   `json:"request_id"`
	SANs      []string `json:"sans"`
	Tenant    string   `json:"tenant"`
	CA        string   `json:"ca"`
	// ProblemType is the ACME problem type (RFC 8555 section 6.7, e.g.
	// "urn:ietf:params:acme:error:rejectedIdentifier") or a certfleet one
	// ("urn:certfleet:error:<name>").
	ProblemType string `json:"problem_type"`
	// Detail is the problem detail, at most 1024 bytes, no control characters.
	Detail string `json:"detail"`
	// Retryable says whether the worker will try again; NextAttemptAt is set
	// exactly when it is.
	Retryable     bool      `json:"retryable"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// Attempt is the number of the attempt that failed (1 or more).
	Attempt int `json:"attempt"`
}

// IssuanceDeferred reports that a request was held back by a rate limit and
// re-queued for RetryAt.
type IssuanceDeferred struct {
	RequestID string   `json:"request_id"`
	SANs      []string `json:"sans"`
	Tenant    string   `json:"tenant"`
	CA        string   `json:"ca"`
	// Limit is the limit's name ("CertificatesPerDomain") and LimitKey the
	// bucket key it was spent against ("example.com").
	Limit    string    `json:"limit"`
	LimitKey string    `json:"limit_key"`
	RetryAt  time.Time `json:"retry_at"`
	// Attempt is the request's Attempt when it was deferred.
	Attempt int `json:"attempt"`
}

// RenewalScheduled reports the time the scheduler chose to renew a
// certificate. A later event for the same certificate supersedes it.
type RenewalScheduled struct {
	// RequestID is the id the renewal's IssuanceRequest will carry.
	RequestID string   `json:"request_id"`
	SANs      []string `json:"sans"`
	Tenant    string   `json:"tenant"`
	CA        string   `json:"ca"`
	// Replaces is the ARI id of the certificate being renewed.
	Replaces string       `json:"replaces"`
	RenewAt  time.Time    `json:"renew_at"`
	Basis    RenewalBasis `json:"basis"`
	// WindowStart and WindowEnd are the CA's ARI suggested window, set
	// together when Basis is "ari".
	WindowStart time.Time `json:"window_start,omitzero"`
	WindowEnd   time.Time `json:"window_end,omitzero"`
}

func (*IssuanceRequest) EventType() Type  { return TypeIssuanceRequested }
func (*CertObtained) EventType() Type     { return TypeCertObtained }
func (*CertFailed) EventType() Type       { return TypeCertFailed }
func (*IssuanceDeferred) EventType() Type { return TypeIssuanceDeferred }
func (*RenewalScheduled) EventType() Type { return TypeRenewalScheduled }

func (p *IssuanceRequest) Names() []string  { return p.SANs }
func (p *CertObtained) Names() []string     { return p.SANs }
func (p *CertFailed) Names() []string       { return p.SANs }
func (p *IssuanceDeferred) Names() []string { return p.SANs }
func (p *RenewalScheduled) Names() []string { return p.SANs }

// The outcome part of the event id: one obtained per request; one failure or
// deferral per attempt; one schedule per chosen time.
func (p *IssuanceRequest) idName() string  { return attemptName(p.Attempt) }
func (p *CertObtained) idName() string     { return "" }
func (p *CertFailed) idName() string       { return attemptName(p.Attempt) }
func (p *IssuanceDeferred) idName() string { return attemptName(p.Attempt) }
func (p *RenewalScheduled) idName() string {
	return "renew_at=" + p.RenewAt.UTC().Format(time.RFC3339Nano)
}

func attemptName(n int) string { return "attempt=" + strconv.Itoa(n) }

// requestID returns the payload's request id.
func requestID(p Payload) string {
	switch p := p.(type) {
	case *IssuanceRequest:
		return p.RequestID
	case *CertObtained:
		return p.RequestID
	case *CertFailed:
		return p.RequestID
	case *IssuanceDeferred:
		return p.RequestID
	case *RenewalScheduled:
		return p.RequestID
	case *CertRevoked:
		return p.RequestID
	}
	return ""
}

// registry maps each type to a constructor of its empty payload.
var registry = map[Type]func() Payload{
	TypeIssuanceRequested: func() Payload { return new(IssuanceRequest) },
	TypeCertObtained:      func() Payload { return new(CertObtained) },
	TypeCertFailed:        func() Payload { return new(CertFailed) },
	TypeIssuanceDeferred:  func() Payload { return new(IssuanceDeferred) },
	TypeRenewalScheduled:  func() Payload { return new(RenewalScheduled) },
	TypeCertRevoked:       func() Payload { return new(CertRevoked) },
}
