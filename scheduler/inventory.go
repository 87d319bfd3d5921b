package scheduler

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/names"
)

// DefaultTenant is the tenant of certificates managed without one (events
// require a non-empty tenant).
const DefaultTenant = "default"

// Spec is one certificate an operator wants kept valid.
type Spec struct {
	SANs    []string       // DNS names in any accepted form; normalised by Normalize
	Tenant  string         // default DefaultTenant
	CA      string         // configured CA name or https ACME directory URL; required
	Profile string         // ACME profile; empty for the CA's default
	KeyType events.KeyType // default ecdsa-p256
}

// Managed is a normalised Spec: canonical, sorted, de-duplicated SANs and the
// identity derived from them.
type Managed struct {
	Spec
	Identity string
}

// ErrInvalidSpec wraps every rejection of a Spec; the message names the field.
var ErrInvalidSpec = errors.New("invalid certificate spec")

// Normalize validates s with package names (IDNA, label rules, public
// suffixes) and the events contract (tenant, CA, profile, key type) and
// returns its canonical form. Two specs naming the same SAN set in different
// order or case get the same Identity.
func Normalize(s Spec) (Managed, error) {
	if len(s.SANs) == 0 {
		return Managed{}, fmt.Errorf("%w: sans: at least one name is required", ErrInvalidSpec)
	}
	out := make([]string, 0, len(s.SANs))
	for i, n := range s.SANs {
		c, err := names.Normalize(n)
		if err != nil {
			return Managed{}, fmt.Errorf("%w: sans[%d]: %w", ErrInvalidSpec, i, err)
		}
		out = append(out, c)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > events.MaxSANs {
		return Managed{}, fmt.Errorf("%w: sans: %d names, at most %d", ErrInvalidSpec, len(out), events.MaxSANs)
	}
	s.SANs = out
	if s.Tenant == "" {
		s.Tenant = DefaultTenant
	}
	if s.KeyType == "" {
		s.KeyType = events.KeyECDSAP256
	}
	// The row must be emittable later: check it as the request it will become.
	req := events.IssuanceRequest{RequestID: "validate", SANs: s.SANs, Tenant: s.Tenant, KeyType: s.KeyType,
		CA: s.CA, Profile: s.Profile, Reason: events.ReasonNew}
	if err := req.Validate(); err != nil {
		return Managed{}, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return Managed{Spec: s, Identity: events.Identity(s.SANs)}, nil
}

// Inventory is the set of managed certificates (table managed_certificates).
// Safe for concurrent use.
type Inventory struct {
	db    *db.DB
	clock clock.Clock
}

// NewInventory returns the inventory over d (schema migrated) telling the
// time by c (nil: the wall clock).
func NewInventory(d *db.DB, c clock.Clock) *Inventory {
	return &Inventory{db: d, clock: clock.Or(c)}
}

// ManageResult counts what Manage did.
type ManageResult struct {
	Added   int // new rows, due at once
	Already int // SAN sets that were managed before; left unchanged
}

// insertBatch inserts one batch with a single statement: rows come in as
// parallel arrays (SANs comma-joined: a DNS name never holds a comma), and
// ON CONFLICT DO NOTHING leaves a managed SAN set exactly as it was.
const insertBatch = `
INSERT INTO managed_certificates (identity, sans, tenant, ca_directory, profile, key_type, next_renewal_at, planned_at, renewal_basis)
SELECT u.identity, string_to_array(u.sans, ','), u.tenant, u.ca, u.profile, u.key_type, $7, $7, 'new'
FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
    AS u(identity, sans, tenant, ca, profile, key_type)
ON CONFLICT (identity) DO NOTHING
RETURNING identity`

// Manage adds the certificates, due at once (the tick emits their first
// issuance, or adopts a valid certificate already issued for the SAN set).
// Specs must be normalised; duplicates among them count once. A SAN set that
// is already managed is left unchanged, whatever tenant, CA or profile it
// is given now. Each batch of up to 1,000 rows is one statement.
func (inv *Inventory) Manage(ctx context.Context, ms ...Managed) (ManageResult, error) {
	var res ManageResult
	seen := make(map[string]bool, len(ms))
	uniq := ms[:0:0]
	for _, m := range ms {
		if !seen[m.Identity] {
			seen[m.Identity] = true
			uniq = append(uniq, m)
		}
	}
	res.Already = len(ms) - len(uniq)
	now := inv.clock.Now().UTC()
	for batch := range slices.Chunk(uniq, 1000) {
		cols := make([][]string, 6)
		for _, m := range batch {
			cols[0] = append(cols[0], m.Identity)
			cols[1] = append(cols[1], strings.Join(m.SANs, ","))
			cols[2] = append(cols[2], m.Tenant)
			cols[3] = append(cols[3], m.CA)
			cols[4] = append(cols[4], m.Profile)
			cols[5] = append(cols[5], string(m.KeyType))
		}
		rows, err := inv.db.Pool().Query(ctx, insertBatch, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], now)
		if err != nil {
			return res, fmt.Errorf("scheduler: manage: %w", err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, fmt.Errorf("scheduler: manage: %w", err)
		}
		res.Added += n
		res.Already += len(batch) - n
	}
	return res, nil
}

// Unmanage stops managing the certificates with these identities (issued
// certificates stay stored; a job already emitted still runs). It returns
// how many were managed.
func (inv *Inventory) Unmanage(ctx context.Context, identities ...string) (int, error) {
	tag, err := inv.db.Pool().Exec(ctx, `DELETE FROM managed_certificates WHERE identity = ANY($1)`, identities)
	if err != nil {
		return 0, fmt.Errorf("scheduler: unmanage: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Row is a managed certificate as stored.
type Row struct {
	Managed
	NextRenewalAt time.Time
	PlannedAt     time.Time
	RequestID     string // job in flight, "" when none
	EmittedAt     time.Time
	Failures      int
	Basis         Basis
	CertARIID     string
	CertNotAfter  time.Time
	ARIWindow     Window
	ARIRetryAt    time.Time
	FenceToken    int64
	LastError     string
}

// Get returns one managed certificate, or ErrNotManaged.
func (inv *Inventory) Get(ctx context.Context, identity string) (Row, error) {
	var r Row
	var sans []string
	var plannedAt, emittedAt, notAfter, ws, we, ariRetry *time.Time
	var reqID, ariID *string
	var keyType, basis string
	err := inv.db.Pool().QueryRow(ctx, `
SELECT identity, sans, tenant, ca_directory, profile, key_type, next_renewal_at, planned_at, request_id,
       emitted_at, failures, renewal_basis, cert_ari_id, cert_not_after, ari_window_start, ari_window_end,
       ari_retry_at, fence_token, last_error
FROM managed_certificates WHERE identity = $1`, identity).Scan(&r.Identity, &sans, &r.Tenant, &r.CA, &r.Profile, &keyType,
		&r.NextRenewalAt, &plannedAt, &reqID, &emittedAt, &r.Failures, &basis, &ariID, &notAfter, &ws, &we, &ariRetry,
		&r.FenceToken, &r.LastError)
	if err != nil {
		if errors.Is(err, errNoRows) {
			return Row{}, ErrNotManaged
		}
		return Row{}, fmt.Errorf("scheduler: get: %w", err)
	}
	r.SANs, r.KeyType, r.Basis = sans, events.KeyType(keyType), Basis(basis)
	r.PlannedAt, r.EmittedAt, r.CertNotAfter = deref(plannedAt), deref(emittedAt), deref(notAfter)
	r.ARIWindow, r.ARIRetryAt = Window{deref(ws), deref(we)}, deref(ariRetry)
	r.RequestID, r.CertARIID = derefS(reqID), derefS(ariID)
	return r, nil
}

// ErrNotManaged means no managed certificate has that identity.
var ErrNotManaged = errors.New("scheduler: certificate is not managed")

// Count returns how many certificates are managed.
func (inv *Inventory) Count(ctx context.Context) (int64, error) {
	var n int64
	err := inv.db.Pool().QueryRow(ctx, `SELECT count(*) FROM managed_certificates`).Scan(&n)
	return n, err
}

// parseLine reads one line of an import file: SANs separated by spaces or
// commas. Blank lines and lines starting with '#' hold nothing (nil, nil).
func parseLine(line string) []string {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	return strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

// ImportResult counts what Import did.
type ImportResult struct {
	ManageResult
	Lines int // non-blank, non-comment lines read
}

// Import reads r, one SAN set per line (parseLine), applies template's
// tenant, CA, profile and key type to each, validates every line first and
// manages them in batches. A bad line fails the whole import before
// anything is written, with an error naming its line number.
func (inv *Inventory) Import(ctx context.Context, r io.Reader, template Spec) (ImportResult, error) {
	var res ImportResult
	var ms []Managed
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		sans := parseLine(sc.Text())
		if sans == nil {
			continue
		}
		res.Lines++
		s := template
		s.SANs = sans
		m, err := Normalize(s)
		if err != nil {
			return res, fmt.Errorf("line %d: %w", ln, err)
		}
		ms = append(ms, m)
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("scheduler: import: %w", err)
	}
	mr, err := inv.Manage(ctx, ms...)
	res.ManageResult = mr
	return res, err
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func derefS(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
