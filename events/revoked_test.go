package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// sampleRevoked is the cert.revoked sample payload (last in Types() order).
func sampleRevoked(t testing.TB) CertRevoked {
	ps := samplePayloads(t)
	return *ps[len(ps)-1].(*CertRevoked)
}

func TestRevocationReasons(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    RevocationReason
		name    string
		revokes bool
	}{
		{"0", RevokeUnspecified, "unspecified", true},
		{"unspecified", RevokeUnspecified, "unspecified", true},
		{"keyCompromise", RevokeKeyCompromise, "keyCompromise", true},
		{"1", RevokeKeyCompromise, "keyCompromise", true},
		{"cACompromise", RevokeCACompromise, "cACompromise", true},
		{"affiliationChanged", RevokeAffiliationChanged, "affiliationChanged", true},
		{"4", RevokeSuperseded, "superseded", true},
		{"cessationOfOperation", RevokeCessationOfOperation, "cessationOfOperation", true},
		{"certificateHold", RevokeCertificateHold, "certificateHold", false},
		{"7", 7, "reason(7)", false},
		{"removeFromCRL", RevokeRemoveFromCRL, "removeFromCRL", false},
		{"privilegeWithdrawn", RevokePrivilegeWithdrawn, "privilegeWithdrawn", true},
		{"10", RevokeAACompromise, "aACompromise", true},
		{"11", 11, "reason(11)", false},
		{"-1", -1, "reason(-1)", false},
		{"KeyCompromise", -1, "", false}, // names match exactly
		{"", -1, "", false},
	} {
		got, err := ParseRevocationReason(tc.in)
		if tc.revokes != (err == nil) {
			t.Errorf("ParseRevocationReason(%q) = %v, %v; want accepted=%v", tc.in, got, err, tc.revokes)
			continue
		}
		if err != nil {
			if !strings.Contains(err.Error(), "1 (keyCompromise)") {
				t.Errorf("ParseRevocationReason(%q): error %q does not list the reasons", tc.in, err)
			}
			if tc.name != "" && tc.want.String() != tc.name {
				t.Errorf("%d.String() = %q, want %q", tc.want, tc.want.String(), tc.name)
			}
			continue
		}
		if got != tc.want || got.String() != tc.name || !got.Revokes() {
			t.Errorf("ParseRevocationReason(%q) = %d (%s), want %d (%s)", tc.in, got, got, tc.want, tc.name)
		}
	}
}

func TestCertRevokedValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*CertRevoked)
		field string // "" means valid
		err   error
	}{
		{"sample", func(*CertRevoked) {}, "", nil},
		{"no replacement", func(p *CertRevoked) { p.ReplacementRequested, p.ReplacementRequestID = false, "" }, "", nil},
		{"replacement id without request", func(p *CertRevoked) { p.ReplacementRequested = false }, "replacement_request_id", ErrInvalidField},
		{"replacement requested without id", func(p *CertRevoked) { p.ReplacementRequestID = "" }, "replacement_request_id", ErrInvalidField},
		{"replacement id bad pattern", func(p *CertRevoked) { p.ReplacementRequestID = "-x" }, "replacement_request_id", ErrInvalidField},
		{"reason name of another code", func(p *CertRevoked) { p.Reason = "superseded" }, "reason", ErrInvalidField},
		{"reason name in another case", func(p *CertRevoked) { p.Reason = "KeyCompromise" }, "reason", ErrInvalidField},
		{"no reason name", func(p *CertRevoked) { p.Reason = "" }, "reason", ErrMissingField},
		{"certificateHold", func(p *CertRevoked) { p.ReasonCode, p.Reason = RevokeCertificateHold, "certificateHold" }, "reason_code", ErrInvalidField},
		{"removeFromCRL", func(p *CertRevoked) { p.ReasonCode, p.Reason = RevokeRemoveFromCRL, "removeFromCRL" }, "reason_code", ErrInvalidField},
		{"unassigned 7", func(p *CertRevoked) { p.ReasonCode, p.Reason = 7, "reason(7)" }, "reason_code", ErrInvalidField},
		{"no revoked_at", func(p *CertRevoked) { p.RevokedAt = time.Time{} }, "revoked_at", ErrMissingField},
		{"serial with leading zero", func(p *CertRevoked) { p.Serial = "0" + p.Serial }, "serial", ErrInvalidField},
		{"no ari id", func(p *CertRevoked) { p.ARICertID = "" }, "ari_cert_id", ErrMissingField},
		{"no request id", func(p *CertRevoked) { p.RequestID = "" }, "request_id", ErrMissingField},
		{"bad SAN", func(p *CertRevoked) { p.SANs = []string{"Example.com"} }, "sans[0]", ErrInvalidSAN},
	} {
		p := sampleRevoked(t)
		tc.edit(&p)
		err := p.Validate()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, tc.err) {
			t.Errorf("%s: Validate() = %v; want %s: %v", tc.name, err, tc.field, tc.err)
		}
	}
}

// NewCertRevoked names the reason, dates the event at the revocation and
// gives one id per certificate: the same revocation re-published (later, by
// another run) has the same id; another certificate's has another.
func TestNewCertRevoked(t *testing.T) {
	p := sampleRevoked(t)
	p.Reason = ""
	p.RevokedAt = time.Date(2026, 1, 2, 8, 0, 0, 0, time.FixedZone("CET", 3600))
	e, err := NewCertRevoked("//certfleet/cli", p)
	if err != nil {
		t.Fatal(err)
	}
	got := e.Data.(*CertRevoked)
	if got.Reason != "keyCompromise" || !e.Time.Equal(p.RevokedAt) || e.Time.Location() != time.UTC {
		t.Errorf("reason %q, ce_time %v; want keyCompromise at %v in UTC", got.Reason, e.Time, p.RevokedAt)
	}
	if e.Type() != TypeCertRevoked || e.Key() != Identity(p.SANs) || DefaultTopics().For(e.Type()) != DefaultTopics().Events {
		t.Errorf("type %s, key %s, topic %s", e.Type(), e.Key(), DefaultTopics().For(e.Type()))
	}
	if want := EventID(p.RequestID, TypeCertRevoked, ""); e.ID != want {
		t.Errorf("id %s, want %s", e.ID, want)
	}
	p.ReasonCode, p.Reason, p.RevokedAt = RevokeSuperseded, "", p.RevokedAt.Add(time.Hour)
	again, err := NewCertRevoked("//certfleet/cli", p)
	if err != nil || again.ID != e.ID {
		t.Errorf("re-published revocation: id %s, %v; want %s", again.ID, err, e.ID)
	}
	p.RequestID = "req-0002"
	other, _ := NewCertRevoked("//certfleet/cli", p)
	if other.ID == e.ID {
		t.Error("another certificate's revocation has the same id")
	}
	p.ReasonCode, p.Reason = RevokeCertificateHold, ""
	if _, err := NewCertRevoked("//certfleet/cli", p); !errors.Is(err, ErrInvalidField) {
		t.Errorf("certificateHold: %v; want invalid", err)
	}
}

// The rules the schema can express, the schema and Decode apply alike.
func TestCertRevokedSchemaAndDecodeAgree(t *testing.T) {
	schema := compileSchemas(t)[TypeCertRevoked]
	rev := encodeSample(t, len(Types())-1)
	noRepl := withField(withField(rev, "replacement_requested", "false"), "replacement_request_id", "")
	for _, tc := range []struct {
		name string
		m    func() []byte
		ok   bool
	}{
		{"sample", func() []byte { return rev.Value }, true},
		{"no replacement", func() []byte { return noRepl.Value }, true},
		{"no replacement, id null", func() []byte { return withField(noRepl, "replacement_request_id", "null").Value }, true},
		{"no replacement, id set", func() []byte { return withField(noRepl, "replacement_request_id", `"r-2"`).Value }, false},
		{"replacement, id null", func() []byte { return withField(rev, "replacement_request_id", "null").Value }, false},
		{"replacement, id absent", func() []byte { return withField(rev, "replacement_request_id", "").Value }, false},
		{"replacement id empty", func() []byte { return withField(rev, "replacement_request_id", `""`).Value }, false},
		{"other code and name", func() []byte {
			return withField(withField(rev, "reason_code", "4"), "reason", `"superseded"`).Value
		}, true},
		{"code and name differ", func() []byte { return withField(rev, "reason", `"superseded"`).Value }, false},
		{"certificateHold", func() []byte {
			return withField(withField(rev, "reason_code", "6"), "reason", `"certificateHold"`).Value
		}, false},
		{"reason code a string", func() []byte { return withField(rev, "reason_code", `"1"`).Value }, false},
		{"reason code null", func() []byte { return withField(rev, "reason_code", "null").Value }, false},
		{"reason missing", func() []byte { return withField(rev, "reason", "").Value }, false},
		{"revoked_at not a time", func() []byte { return withField(rev, "revoked_at", `"today"`).Value }, false},
		{"replacement_requested a string", func() []byte { return withField(rev, "replacement_requested", `"true"`).Value }, false},
		{"unknown field", func() []byte { return withField(rev, "revoked_by", `"ops"`).Value }, false},
	} {
		m := rev
		m.Value = tc.m()
		_, err := Decode(m)
		schemaErr := validateAgainst(t, schema, m.Value)
		if tc.ok != (err == nil) || tc.ok != (schemaErr == nil) {
			t.Errorf("%s: Decode %v, schema %v; want ok=%v for %s", tc.name, err, schemaErr, tc.ok, m.Value)
		}
	}
}
