package scheduler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/certfleet/certfleet/events"
)

// How a tick avoids losing or doubling a job: emit, then mark, with
// deterministic job ids.
//
// A row's job id is RequestID(identity, planned_at) and planned_at does not
// change when the job is emitted. So a tick writes the batch to Kafka
// (synchronously, all replicas) and only then marks the rows emitted in one
// statement. A crash after the write and before the mark leaves the rows
// due; the next tick (this leader's or a standby's) emits them again with the
// same request ids, and the issuer-workers' claim on the request id (certstore)
// turns the second copy into a no-op (or a re-publication of the stored
// outcome). A crash before the write loses nothing: the rows are still due.
// An outbox in the same transaction would give the same guarantee with an
// extra table, an extra write per job and a relay; the deterministic id costs
// nothing because the workers must dedupe Kafka's own redeliveries anyway.
//
// Fencing: the mark is conditional on the lease (same holder, same token, not
// expired) and on the row's fence_token not exceeding ours, so a deposed
// leader's late marks are refused. Its late emissions carry request ids a
// new leader would also use for the same rows, and the fencing token in the
// certfleet_fencing_token header for consumers that want to drop them.

// HeaderFencingToken carries the emitting leader's fencing token on every job.
const HeaderFencingToken = "certfleet_fencing_token"

// ErrNotLeader means the tick stopped because this process no longer holds
// the lease (expired locally, or the database refused the fenced mark).
var ErrNotLeader = errors.New("scheduler: not the leader")

// RequestID is the deterministic id of the job planned for identity at
// plannedAt: the same row planned for the same time always emits the same id.
func RequestID(identity string, plannedAt time.Time) string {
	sum := sha256.Sum256([]byte(identity + "\n" + plannedAt.UTC().Format(time.RFC3339Nano)))
	return "sched-" + hex.EncodeToString(sum[:20])
}

// TickResult says what one tick did.
type TickResult struct {
	Idle      bool // nothing was due (one index probe)
	Emitted   int  // jobs written to Kafka and marked
	Adopted   int  // new rows whose SAN set already had a valid certificate: planned, not emitted
	Refused   int  // rows whose mark the database refused (changed meanwhile, or fenced)
	Remaining bool // the budget ran out with rows still due
}

// dueRow is what the tick reads of a due row.
type dueRow struct {
	identity, tenant, ca, profile, keyType, requestID string
	sans                                              []string
	due, planned                                      time.Time
	basis                                             Basis
}

// issued is the newest stored certificate of an identity.
type issued struct {
	ariID               string
	notBefore, notAfter time.Time
}

var epoch = time.Unix(0, 0).UTC()

const oldestDue = `SELECT next_renewal_at FROM managed_certificates WHERE next_renewal_at <= $1
ORDER BY next_renewal_at, identity LIMIT 1`

// Tenants in index order, one index probe each (a loose index scan; works
// on PostgreSQL, which has no skip scan, and on CockroachDB).
const listTenants = `
WITH RECURSIVE t(tenant) AS (
    (SELECT tenant FROM managed_certificates ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT m.tenant FROM managed_certificates m WHERE m.tenant > t.tenant ORDER BY m.tenant LIMIT 1)
    FROM t WHERE t.tenant IS NOT NULL
)
SELECT tenant FROM t WHERE tenant IS NOT NULL`

// Up to $5 due rows per tenant, after each tenant's keyset cursor, through
// managed_certificates_tenant_due_idx.
const dueByTenant = `
SELECT m.identity, m.sans, m.tenant, m.ca_directory, m.profile, m.key_type, m.next_renewal_at,
       COALESCE(m.planned_at, m.next_renewal_at), COALESCE(m.request_id, ''), m.renewal_basis
FROM unnest($1::TEXT[], $2::TIMESTAMPTZ[], $3::TEXT[]) AS c(tenant, after_at, after_id)
CROSS JOIN LATERAL (
    SELECT * FROM managed_certificates mc
    WHERE mc.tenant = c.tenant AND mc.next_renewal_at <= $4
      AND (mc.next_renewal_at, mc.identity) > (c.after_at, c.after_id)
    ORDER BY mc.next_renewal_at, mc.identity
    LIMIT $5
) AS m`

const latestIssued = `
SELECT DISTINCT ON (identity) identity, ari_cert_id, not_before, not_after
FROM issued_certificates WHERE identity = ANY($1)
ORDER BY identity, not_after DESC`

// markEmitted records a batch as emitted, fenced: $8/$9/$4 name the lease.
var markEmitted = `
UPDATE managed_certificates AS m
SET request_id = u.request_id, planned_at = u.planned_at, emitted_at = $2, next_renewal_at = $3,
    fence_token = $4, updated_at = now()
FROM unnest($1::TEXT[], $5::TIMESTAMPTZ[], $6::TEXT[], $7::TIMESTAMPTZ[]) AS u(identity, due, request_id, planned_at)
WHERE m.identity = u.identity AND m.next_renewal_at = u.due AND m.fence_token <= $4
  AND ` + fenceCond("$8", "$9", "$4") + `
RETURNING m.identity`

// markAdopted plans rows whose SAN set already has a valid certificate.
var markAdopted = `
UPDATE managed_certificates AS m
SET next_renewal_at = u.renew_at, planned_at = u.renew_at, renewal_basis = u.basis, cert_ari_id = u.ari_id,
    cert_not_before = u.not_before, cert_not_after = u.not_after, fence_token = $2, updated_at = now()
FROM unnest($1::TEXT[], $3::TIMESTAMPTZ[], $4::TIMESTAMPTZ[], $5::TEXT[], $6::TEXT[], $7::TIMESTAMPTZ[], $8::TIMESTAMPTZ[])
    AS u(identity, due, renew_at, basis, ari_id, not_before, not_after)
WHERE m.identity = u.identity AND m.next_renewal_at = u.due AND m.fence_token <= $2
  AND ` + fenceCond("$9", "$10", "$2") + `
RETURNING m.identity`

// Tick emits the due jobs the budget allows, fairly across tenants, in
// batches. lease returns the current lease state; it is consulted before
// every batch, so a tick stops as soon as leadership is in doubt. Reads go
// through indexes only: an idle tick is one index probe whatever the fleet
// size.
func (s *Scheduler) Tick(ctx context.Context, lease func() LeaseState) (TickResult, error) {
	start := time.Now()
	defer func() { s.cfg.Metrics.TickSeconds.Observe(time.Since(start).Seconds()) }()
	var res TickResult
	now := s.cfg.Clock.Now().UTC()
	m := s.cfg.Metrics

	var oldest time.Time
	err := s.cfg.DB.Pool().QueryRow(ctx, oldestDue, now).Scan(&oldest)
	if errors.Is(err, errNoRows) {
		m.DueBacklog.Set(0)
		m.MostOverdue.Set(0)
		res.Idle = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("scheduler: tick: %w", err)
	}
	m.MostOverdue.Set(now.Sub(oldest).Seconds())
	var backlog int64
	if err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM managed_certificates
		WHERE next_renewal_at <= $1 LIMIT 1000000) AS d`, now).Scan(&backlog); err != nil {
		return res, fmt.Errorf("scheduler: tick: backlog: %w", err)
	}
	m.DueBacklog.Set(float64(backlog))

	allowed := s.budget.available(now)
	m.BudgetTokens.Set(float64(allowed))
	if allowed == 0 {
		res.Remaining = true
		return res, nil
	}
	rows, more, err := s.selectFair(ctx, now, allowed)
	if err != nil {
		return res, err
	}
	res.Remaining = more
	for i := 0; i < len(rows); i += s.cfg.BatchSize {
		batch := rows[i:min(i+s.cfg.BatchSize, len(rows))]
		ls := lease()
		if !ls.Held || !s.cfg.Clock.Now().Before(ls.ValidUntil) {
			return res, ErrNotLeader
		}
		em, ad, ref, err := s.emitBatch(ctx, now, ls, batch)
		res.Emitted += em
		res.Adopted += ad
		res.Refused += ref
		s.budget.spend(em)
		if err != nil {
			return res, err
		}
	}
	if res.Emitted > 0 || res.Refused > 0 {
		s.cfg.Logger.Debug("tick", "emitted", res.Emitted, "adopted", res.Adopted, "refused", res.Refused, "backlog", backlog)
	}
	return res, nil
}

// selectFair picks up to n due rows, max-min fair across tenants: each round
// gives every tenant that still has due rows an equal share of what is left
// (keyset pagination per tenant), and tenants that had fewer than their
// share leave theirs to the others. The start tenant rotates per tick, so the
// remainder of an uneven split does not always favour the same tenants.
func (s *Scheduler) selectFair(ctx context.Context, now time.Time, n int) ([]dueRow, bool, error) {
	trows, err := s.cfg.DB.Pool().Query(ctx, listTenants)
	if err != nil {
		return nil, false, fmt.Errorf("scheduler: tick: tenants: %w", err)
	}
	var tenants []string
	for trows.Next() {
		var t string
		if err := trows.Scan(&t); err != nil {
			trows.Close()
			return nil, false, err
		}
		tenants = append(tenants, t)
	}
	trows.Close()
	if err := trows.Err(); err != nil {
		return nil, false, fmt.Errorf("scheduler: tick: tenants: %w", err)
	}
	if len(tenants) == 0 {
		return nil, false, nil
	}
	rot := int(s.ticks.Add(1) % uint64(len(tenants)))
	tenants = append(tenants[rot:], tenants[:rot]...)

	type cursor struct {
		at time.Time
		id string
	}
	cur := make(map[string]cursor, len(tenants))
	for _, t := range tenants {
		cur[t] = cursor{epoch, ""}
	}
	var picked []dueRow
	active := tenants
	more := false
	for len(picked) < n && len(active) > 0 {
		left := n - len(picked)
		share := (left + len(active) - 1) / len(active)
		ats := make([]time.Time, len(active))
		ids := make([]string, len(active))
		for i, t := range active {
			ats[i], ids[i] = cur[t].at, cur[t].id
		}
		rs, err := s.cfg.DB.Pool().Query(ctx, dueByTenant, active, ats, ids, now, share)
		if err != nil {
			return nil, false, fmt.Errorf("scheduler: tick: due rows: %w", err)
		}
		got := map[string][]dueRow{}
		for rs.Next() {
			var r dueRow
			var basis string
			if err := rs.Scan(&r.identity, &r.sans, &r.tenant, &r.ca, &r.profile, &r.keyType, &r.due, &r.planned, &r.requestID, &basis); err != nil {
				rs.Close()
				return nil, false, err
			}
			r.basis = Basis(basis)
			got[r.tenant] = append(got[r.tenant], r)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return nil, false, fmt.Errorf("scheduler: tick: due rows: %w", err)
		}
		// Round-robin over the tenants' rows until the budget is used.
		var next []string
		for i := 0; len(picked) < n; i++ {
			progressed := false
			for _, t := range active {
				if i < len(got[t]) && len(picked) < n {
					picked = append(picked, got[t][i])
					progressed = true
				}
			}
			if !progressed {
				break
			}
		}
		for _, t := range active {
			rs := got[t]
			if len(rs) == share {
				next = append(next, t)
				last := rs[len(rs)-1]
				cur[t] = cursor{last.due, last.identity}
			}
		}
		if len(picked) >= n {
			// Anything fetched but not picked, or any tenant with a full
			// share, may still have due rows.
			more = len(next) > 0 || len(picked) < countRows(got)
			break
		}
		active = next
	}
	return picked, more, nil
}

func countRows(m map[string][]dueRow) int {
	n := 0
	for _, rs := range m {
		n += len(rs)
	}
	return n
}

// emitBatch writes one batch of jobs to Kafka and then marks it, fenced.
func (s *Scheduler) emitBatch(ctx context.Context, now time.Time, ls LeaseState, batch []dueRow) (emitted, adopted, refused int, err error) {
	ids := make([]string, len(batch))
	for i, r := range batch {
		ids[i] = r.identity
	}
	certs, err := s.latestIssued(ctx, ids)
	if err != nil {
		return 0, 0, 0, err
	}
	var msgs []kafka.Message
	var emit, adopt []dueRow
	var adoptPlans []renewalPlan
	reasons := map[string]int{}
	for _, r := range batch {
		c, has := certs[r.identity]
		if has && r.basis == BasisNew && r.requestID == "" && c.notAfter.After(now) {
			// Managed after a certificate was already issued for the SAN set:
			// plan its renewal instead of ordering a new one now.
			p := planRenewal(s.cfg.Policy, now, &certLife{c.notBefore, c.notAfter}, nil, draw(r.identity, c.ariID))
			if p.RenewAt.After(now) {
				adopt, adoptPlans = append(adopt, r), append(adoptPlans, p)
				continue
			}
		}
		req := &events.IssuanceRequest{
			RequestID: RequestID(r.identity, r.planned), SANs: r.sans, Tenant: r.tenant,
			KeyType: events.KeyType(r.keyType), CA: r.ca, Profile: r.profile, Reason: events.ReasonNew, Priority: 5,
		}
		label := "new"
		if has {
			req.Reason, req.Priority, label = events.ReasonRenewal, 3, "renewal"
			if c.notAfter.After(now) {
				req.Replaces = c.ariID
			}
			if r.basis == BasisEmergency {
				req.Priority = 8
			}
		}
		if r.requestID != "" {
			label = "reemit"
		}
		ev, err := events.New(s.cfg.Source, now, req)
		if err != nil {
			// A row that cannot become a valid job (edited by hand?): log
			// it and leave it due rather than stall the batch.
			s.cfg.Logger.Error("managed certificate cannot be emitted", "identity", r.identity, "err", err)
			continue
		}
		msg, err := events.Encode(ev)
		if err != nil {
			s.cfg.Logger.Error("managed certificate cannot be encoded", "identity", r.identity, "err", err)
			continue
		}
		msg.Topic = s.cfg.Topics.Requests
		msg.Headers = append(msg.Headers, kafka.Header{Key: HeaderFencingToken, Value: []byte(strconv.FormatInt(ls.Token, 10))})
		msgs = append(msgs, msg)
		emit = append(emit, r)
		reasons[label]++
	}
	if len(adopt) > 0 {
		n, err := s.markAdopted(ctx, ls, adopt, adoptPlans, certs)
		adopted, refused = n, len(adopt)-n
		if err != nil {
			return 0, adopted, refused, err
		}
	}
	if len(msgs) == 0 {
		return 0, adopted, refused, nil
	}
	if err := s.cfg.Writer.WriteMessages(ctx, msgs...); err != nil {
		return 0, adopted, refused, fmt.Errorf("scheduler: emit: %w", err)
	}
	for l, n := range reasons {
		s.cfg.Metrics.Emitted.WithLabelValues(l).Add(float64(n))
	}
	n, err := s.markEmitted(ctx, now, ls, emit)
	refused += len(emit) - n
	s.cfg.Metrics.Refused.Add(float64(len(emit) - n))
	if err != nil {
		return len(emit), adopted, refused, err
	}
	if n == 0 && len(emit) > 0 {
		// Every mark refused: most likely deposed. The jobs went out with
		// ids a new leader would use too, so nothing is doubled.
		return len(emit), adopted, refused, ErrNotLeader
	}
	return len(emit), adopted, refused, nil
}

func (s *Scheduler) latestIssued(ctx context.Context, ids []string) (map[string]issued, error) {
	rows, err := s.cfg.DB.Pool().Query(ctx, latestIssued, ids)
	if err != nil {
		return nil, fmt.Errorf("scheduler: current certificates: %w", err)
	}
	defer rows.Close()
	out := make(map[string]issued, len(ids))
	for rows.Next() {
		var id string
		var c issued
		if err := rows.Scan(&id, &c.ariID, &c.notBefore, &c.notAfter); err != nil {
			return nil, err
		}
		out[id] = c
	}
	return out, rows.Err()
}

func (s *Scheduler) markEmitted(ctx context.Context, now time.Time, ls LeaseState, rows []dueRow) (int, error) {
	ids := make([]string, len(rows))
	dues := make([]time.Time, len(rows))
	reqs := make([]string, len(rows))
	planned := make([]time.Time, len(rows))
	for i, r := range rows {
		ids[i], dues[i], reqs[i], planned[i] = r.identity, r.due, RequestID(r.identity, r.planned), r.planned
	}
	return countReturned(ctx, s, markEmitted, ids, now, now.Add(s.cfg.Watchdog), ls.Token, dues, reqs, planned,
		LeaseName, s.cfg.Holder)
}

func (s *Scheduler) markAdopted(ctx context.Context, ls LeaseState, rows []dueRow, plans []renewalPlan, certs map[string]issued) (int, error) {
	n := len(rows)
	ids, bases, aris := make([]string, n), make([]string, n), make([]string, n)
	dues, renew, nb, na := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		c := certs[r.identity]
		ids[i], dues[i], renew[i], bases[i] = r.identity, r.due, plans[i].RenewAt, string(plans[i].Basis)
		aris[i], nb[i], na[i] = c.ariID, c.notBefore, c.notAfter
	}
	return countReturned(ctx, s, markAdopted, ids, ls.Token, dues, renew, bases, aris, nb, na, LeaseName, s.cfg.Holder)
}

func countReturned(ctx context.Context, s *Scheduler, sql string, args ...any) (int, error) {
	rows, err := s.cfg.DB.Pool().Query(ctx, sql, args...)
	if err != nil {
		return 0, fmt.Errorf("scheduler: mark: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("scheduler: mark: %w", err)
	}
	return n, nil
}
