// Package incident is what an operator does when certificates must go:
// select them from the inventory (issued_certificates, read only), revoke
// them at their CA (acmeissuer's Revoker, with the account that ordered them
// or their own key) and report it (cert.revoked), publish replacements in the
// emergency lane (reason reissue, priority EmergencyPriority), estimate up
// front whether a deadline can be met at the CA's allowed rate (Estimate:
// pure, from ratelimit's catalogue, overrides and bucket states), and follow
// the replacements to the end (Progress).
//
// It writes no table: the workers store what they obtain, the CA keeps the
// revocation, the events topic carries it.
package incident

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/names"
)

// Selector says which certificates an incident is about. Every field set
// narrows the selection (they combine with AND); at least one must be set.
// Only certificates that have not expired are selected.
type Selector struct {
	// Serials: any of these serial numbers (lower-case hex without leading
	// zeros, as cert_obtained carries them).
	Serials []string
	// SANs: exactly this SAN set (any order, canonicalised by package names).
	SANs []string
	// Tenant: certificates of this tenant.
	Tenant string
	// CA: certificates issued by this CA (the name cert_obtained carries).
	CA string
	// IssuedBefore, IssuedAfter: the certificate's notBefore is before /
	// at or after this time (zero: no bound).
	IssuedBefore, IssuedAfter time.Time
	// CurrentOnly keeps, per SAN set, only the newest certificate (the one
	// a replacement supersedes); otherwise every unexpired one matches.
	CurrentOnly bool
}

// Empty reports whether s selects by nothing (which would be every
// certificate: refused).
func (s Selector) Empty() bool {
	return len(s.Serials) == 0 && len(s.SANs) == 0 && s.Tenant == "" && s.CA == "" &&
		s.IssuedBefore.IsZero() && s.IssuedAfter.IsZero()
}

// Certificate is a selected certificate with what an incident needs: its
// leaf, SAN set, tenant and CA (as its cert_obtained said), and how its SAN
// set is managed (key type and profile, for a replacement).
type Certificate struct {
	ID        string
	Identity  string
	RequestID string
	Serial    string
	ARICertID string
	NotBefore time.Time
	NotAfter  time.Time
	ChainPEM  string
	// SealedKey is the certificate's private key sealed under the fleet
	// keyring (seal.AAD(seal.PurposeCertKey, Identity, RequestID)).
	SealedKey []byte
	SANs      []string
	Tenant    string
	CA        string
	KeyType   events.KeyType
	Profile   string
}

// Leaf parses the first certificate of ChainPEM.
func (c Certificate) Leaf() (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(c.ChainPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("incident: certificate %s: no PEM certificate in its chain", c.Serial)
	}
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("incident: certificate %s: %w", c.Serial, err)
	}
	return leaf, nil
}

// pageSize is how many certificates one query of Select reads.
const pageSize = 1000

// selectSQL reads one page of the selection, in (identity, id) order after
// the key ($1, $2). The CA and SAN set come from the stored cert_obtained
// (issuance_requests.outcome), the key type and profile from the managed
// row; both may be missing (rows stored by hand, SAN sets not managed).
const selectSQL = `
SELECT c.id::TEXT, c.identity, c.request_id, c.serial, c.ari_cert_id, c.not_before, c.not_after, c.chain_pem, c.sealed_key,
       CASE WHEN c.tenant <> '' THEN c.tenant ELSE COALESCE(m.tenant, '') END,
       COALESCE(m.ca_directory, ''), COALESCE(m.key_type, ''), COALESCE(m.profile, ''), r.outcome
  FROM issued_certificates c
  LEFT JOIN managed_certificates m ON m.identity = c.identity
  LEFT JOIN issuance_requests r ON r.request_id = c.request_id
 WHERE (c.identity, c.id::TEXT) > ($1, $2)
   AND c.not_after > $3
   AND (cardinality($4::TEXT[]) = 0 OR c.serial = ANY($4::TEXT[]))
   AND ($5 = '' OR c.identity = $5)
   AND ($6 = '' OR c.tenant = $6 OR (c.tenant = '' AND m.tenant = $6))
   AND ($7::TIMESTAMPTZ IS NULL OR c.not_before < $7::TIMESTAMPTZ)
   AND ($8::TIMESTAMPTZ IS NULL OR c.not_before >= $8::TIMESTAMPTZ)
   AND (NOT $9 OR NOT EXISTS (SELECT 1 FROM issued_certificates n WHERE n.identity = c.identity
                              AND (n.not_after > c.not_after OR n.not_after = c.not_after AND (n.created_at, n.id) > (c.created_at, c.id))))
 ORDER BY c.identity, c.id::TEXT
 LIMIT $10`

// Select reads the certificates s selects, unexpired at now, ordered by
// SAN set identity. The CA filter is applied after reading (the CA is in
// the stored cert_obtained).
func Select(ctx context.Context, d *db.DB, s Selector, now time.Time) ([]Certificate, error) {
	if s.Empty() {
		return nil, errors.New("incident: an empty selection would select every certificate; name serials, a SAN set, a tenant, a CA or an issue time")
	}
	identity := ""
	if len(s.SANs) > 0 {
		canon, err := names.NormalizeSet(s.SANs, events.MaxSANs)
		if err != nil {
			return nil, fmt.Errorf("incident: SAN set: %w", err)
		}
		identity = events.Identity(canon)
	}
	serials := s.Serials
	if serials == nil {
		serials = []string{}
	}
	var before, after *time.Time
	if !s.IssuedBefore.IsZero() {
		before = &s.IssuedBefore
	}
	if !s.IssuedAfter.IsZero() {
		after = &s.IssuedAfter
	}
	var out []Certificate
	lastIdentity, lastID := "", ""
	for {
		rows, err := d.Pool().Query(ctx, selectSQL, lastIdentity, lastID, now, serials, identity, s.Tenant, before, after, s.CurrentOnly, pageSize)
		if err != nil {
			return nil, fmt.Errorf("incident: selecting certificates: %w", err)
		}
		page, err := pgx.CollectRows(rows, scanCertificate)
		if err != nil {
			return nil, fmt.Errorf("incident: selecting certificates: %w", err)
		}
		for _, c := range page {
			if s.CA == "" || c.CA == s.CA {
				out = append(out, c)
			}
		}
		if len(page) < pageSize {
			return out, nil
		}
		lastIdentity, lastID = page[len(page)-1].Identity, page[len(page)-1].ID
	}
}

func scanCertificate(r pgx.CollectableRow) (Certificate, error) {
	var c Certificate
	var managedCA, keyType string
	var outcome []byte
	if err := r.Scan(&c.ID, &c.Identity, &c.RequestID, &c.Serial, &c.ARICertID, &c.NotBefore, &c.NotAfter, &c.ChainPEM, &c.SealedKey,
		&c.Tenant, &managedCA, &keyType, &c.Profile, &outcome); err != nil {
		return c, err
	}
	c.KeyType = events.KeyType(keyType)
	if c.KeyType == "" {
		c.KeyType = events.KeyECDSAP256
	}
	if ob, ok := obtainedOf(outcome); ok {
		c.SANs, c.CA = ob.SANs, ob.CA
		if c.Tenant == "" {
			c.Tenant = ob.Tenant
		}
	}
	if c.CA == "" {
		c.CA = managedCA
	}
	if len(c.SANs) == 0 {
		if leaf, err := c.Leaf(); err == nil {
			if canon, err := names.NormalizeSet(leaf.DNSNames, events.MaxSANs); err == nil {
				c.SANs = canon
			}
		}
	}
	return c, nil
}

// obtainedOf reads the fields of a stored cert_obtained outcome (the
// pipeline keeps the record as JSON {key, value, headers}).
func obtainedOf(stored []byte) (events.CertObtained, bool) {
	var rec struct {
		Value []byte `json:"value"`
	}
	var ob events.CertObtained
	if len(stored) == 0 || json.Unmarshal(stored, &rec) != nil || json.Unmarshal(rec.Value, &ob) != nil {
		return ob, false
	}
	return ob, ob.CA != "" && len(ob.SANs) > 0 && !slices.Contains(ob.SANs, "")
}
