package scheduler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

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
	// Busy is how long each stage of the tick's pipeline (see Tick) spent
	// in its database or Kafka calls: the stage with the largest share sets
	// the tick's pace.
	Busy struct{ Read, Write, Mark time.Duration }
}

// dueRow is what the tick reads of a due row, with the newest certificate
// stored for its SAN set (has false when none).
type dueRow struct {
	identity, tenant, ca, profile, keyType, requestID string
	jobID                                             string // RequestID(identity, planned), set by prepare
	sans                                              []string
	due, planned                                      time.Time
	basis                                             Basis
	has                                               bool
	cert                                              issued
}

// issued is the newest stored certificate of an identity.
type issued struct {
	ariID               string
	notBefore, notAfter time.Time
}

var epoch = time.Unix(0, 0).UTC()

// IncidentDue is the next_renewal_at of a row in the incident lane: its CA
// moved the certificate's ARI window into the past (an incident
// revocation). Due order puts it before every routine row, so the tick takes
// the lane first through the same indexes (planned_at keeps the real time
// the reissue was planned for, from which its request id is derived).
var IncidentDue = time.Unix(1, 0).UTC()

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

// Up to $5 rows due by $4 per tenant, after each tenant's keyset cursor,
// through managed_certificates_tenant_due_idx, each with the newest stored
// certificate of its SAN set through issued_certificates_identity_idx.
const dueByTenant = `
SELECT m.identity, m.sans, m.tenant, m.ca_directory, m.profile, m.key_type, m.next_renewal_at,
       COALESCE(m.planned_at, m.next_renewal_at), COALESCE(m.request_id, ''), m.renewal_basis,
       ic.ari_cert_id, ic.not_before, ic.not_after
FROM unnest($1::TEXT[], $2::TIMESTAMPTZ[], $3::TEXT[]) AS c(tenant, after_at, after_id)
CROSS JOIN LATERAL (
    SELECT * FROM managed_certificates mc
    WHERE mc.tenant = c.tenant AND mc.next_renewal_at <= $4
      AND (mc.next_renewal_at, mc.identity) > (c.after_at, c.after_id)
    ORDER BY mc.next_renewal_at, mc.identity
    LIMIT $5
) AS m
LEFT JOIN LATERAL (
    SELECT i.ari_cert_id, i.not_before, i.not_after FROM issued_certificates i
    WHERE i.identity = m.identity ORDER BY i.not_after DESC LIMIT 1
) AS ic ON true`

// markEmitted records a batch as emitted, fenced: $8/$9/$4 name the lease.
var markEmitted = `
UPDATE managed_certificates AS m
SET request_id = u.request_id, planned_at = u.planned_at, emitted_at = $2, next_renewal_at = $3,
    fence_token = $4, updated_at = now()
FROM unnest($1::TEXT[], $5::TIMESTAMPTZ[], $6::TEXT[], $7::TIMESTAMPTZ[]) AS u(identity, due, request_id, planned_at)
WHERE m.identity = u.identity AND m.next_renewal_at = u.due AND m.fence_token <= $4
  AND ` + fenceCond("$8", "$9", "$4")

// markAdopted plans rows whose SAN set already has a valid certificate.
var markAdopted = `
UPDATE managed_certificates AS m
SET next_renewal_at = u.renew_at, planned_at = u.renew_at, renewal_basis = u.basis, cert_ari_id = u.ari_id,
    cert_not_before = u.not_before, cert_not_after = u.not_after, fence_token = $2, updated_at = now()
FROM unnest($1::TEXT[], $3::TIMESTAMPTZ[], $4::TIMESTAMPTZ[], $5::TEXT[], $6::TEXT[], $7::TIMESTAMPTZ[], $8::TIMESTAMPTZ[])
    AS u(identity, due, renew_at, basis, ari_id, not_before, not_after)
WHERE m.identity = u.identity AND m.next_renewal_at = u.due AND m.fence_token <= $2
  AND ` + fenceCond("$9", "$10", "$2")

// Tick emits the due jobs the budget allows, in batches: first the incident
// lane (IncidentDue), then the routine rows, each fairly across tenants.
// lease returns the current lease state; it is consulted before every
// batch is written, so a tick stops as soon as leadership is in doubt.
// Reads go through indexes only: an idle tick is one index probe whatever
// the fleet size.
//
// A tick is a pipeline of three stages: read (the next fair batch by keyset
// cursors, encoded), write (to Kafka, one batch at a time) and mark (fenced,
// `markers` batches at a time). Batch n+1 is read while batch n is written
// and earlier ones are marked, so a tick takes about as long as its slowest
// stage (TickResult.Busy says which), and it holds a few batches in memory
// whatever the number due. A batch is marked only after its write
// succeeded; later batches may be written before its mark returns, so a
// deposed leader can write up to markers+1 batches more than before (with
// the request ids the new leader uses for the same rows, see above).
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
		m.IncidentBacklog.Set(0)
		res.Idle = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("scheduler: tick: %w", err)
	}
	var backlog, incidents int64
	if err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE next_renewal_at <= $2)
		FROM (SELECT next_renewal_at FROM managed_certificates WHERE next_renewal_at <= $1 LIMIT 1000000) AS d`,
		now, IncidentDue).Scan(&backlog, &incidents); err != nil {
		return res, fmt.Errorf("scheduler: tick: backlog: %w", err)
	}
	m.DueBacklog.Set(float64(backlog))
	m.IncidentBacklog.Set(float64(incidents))
	if !oldest.After(IncidentDue) {
		// The incident lane has no due time of its own: the most overdue is
		// the oldest routine row's (one more index probe).
		oldest = now
		err := s.cfg.DB.Pool().QueryRow(ctx, `SELECT next_renewal_at FROM managed_certificates
			WHERE next_renewal_at > $2 AND next_renewal_at <= $1 ORDER BY next_renewal_at LIMIT 1`, now, IncidentDue).Scan(&oldest)
		if err != nil && !errors.Is(err, errNoRows) {
			return res, fmt.Errorf("scheduler: tick: %w", err)
		}
	}
	m.MostOverdue.Set(now.Sub(oldest).Seconds())

	allowed := s.budget.available(now)
	m.BudgetTokens.Set(float64(allowed))
	if allowed == 0 {
		res.Remaining = true
		return res, nil
	}
	sel, err := s.newSelection(ctx, now, allowed)
	if err != nil {
		return res, err
	}
	if sel == nil {
		return res, nil
	}
	err = s.pipeline(ctx, now, lease, sel, &res)
	res.Remaining = sel.more
	if res.Emitted > 0 || res.Refused > 0 {
		s.cfg.Logger.Debug("tick", "emitted", res.Emitted, "adopted", res.Adopted, "refused", res.Refused,
			"backlog", backlog, "incident_lane", incidents)
	}
	return res, err
}

// markers is how many batches are marked at once: marking (an indexed
// UPDATE of every row) is the slowest stage, and batches hold disjoint rows.
const markers = 2

// batch is one batch on its way through a tick's pipeline.
type batch struct {
	emit    []dueRow        // rows whose jobs are msgs, in order
	msgs    []kafka.Message // their jobs
	reasons map[string]int  // jobs by metric label
	adopt   []dueRow        // rows planned instead of emitted
	plans   []renewalPlan   // their plans
	ls      LeaseState      // the lease the write was made under
}

// pipeline runs the read, write and mark stages of a tick (see Tick) and
// adds up what they did in res. The first error stops every stage.
func (s *Scheduler) pipeline(ctx context.Context, now time.Time, lease func() LeaseState, sel *selection, res *TickResult) error {
	g, gctx := errgroup.WithContext(ctx)
	toWrite, toMark := make(chan *batch, 1), make(chan *batch, markers)
	g.Go(func() error { // read
		defer close(toWrite)
		for {
			t0 := time.Now()
			rows, err := sel.next(gctx, s.cfg.BatchSize)
			if err != nil || len(rows) == 0 {
				return err
			}
			b := s.prepare(now, rows)
			res.Busy.Read += time.Since(t0)
			select {
			case toWrite <- b:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	g.Go(func() error { // write
		defer close(toMark)
		for b := range toWrite {
			b.ls = lease()
			if !b.ls.Held || !s.cfg.Clock.Now().Before(b.ls.ValidUntil) {
				return ErrNotLeader
			}
			if len(b.msgs) > 0 {
				token := kafka.Header{Key: HeaderFencingToken, Value: []byte(strconv.FormatInt(b.ls.Token, 10))}
				for i := range b.msgs {
					b.msgs[i].Headers = append(b.msgs[i].Headers, token)
				}
				t0 := time.Now()
				if err := s.cfg.Writer.WriteMessages(gctx, b.msgs...); err != nil {
					return fmt.Errorf("scheduler: emit: %w", err)
				}
				res.Busy.Write += time.Since(t0)
				for l, n := range b.reasons {
					s.cfg.Metrics.Emitted.WithLabelValues(l).Add(float64(n))
				}
				res.Emitted += len(b.msgs)
				s.budget.spend(len(b.msgs))
				b.msgs = nil // written: not kept while the mark runs
			}
			select {
			case toMark <- b:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	var mu sync.Mutex // guards adopted, refused, markBusy
	var adopted, refused int
	var markBusy time.Duration
	for range markers {
		g.Go(func() error { // mark
			for b := range toMark {
				t0 := time.Now()
				if len(b.adopt) > 0 {
					n, err := s.markAdopted(gctx, b.ls, b.adopt, b.plans)
					mu.Lock()
					adopted += n
					refused += len(b.adopt) - n
					mu.Unlock()
					if err != nil {
						return err
					}
				}
				if len(b.emit) == 0 {
					continue
				}
				n, err := s.markEmitted(gctx, now, b.ls, b.emit)
				mu.Lock()
				markBusy += time.Since(t0)
				refused += len(b.emit) - n
				mu.Unlock()
				s.cfg.Metrics.Refused.Add(float64(len(b.emit) - n))
				if err != nil {
					return err
				}
				if n == 0 {
					// Every mark refused: most likely deposed. The jobs went
					// out with ids a new leader would use too, so nothing is
					// doubled.
					return ErrNotLeader
				}
			}
			return nil
		})
	}
	err := g.Wait()
	// Emitted and Busy.Write are written by the write stage only, Busy.Read
	// by the read stage: read after Wait.
	res.Adopted += adopted
	res.Refused += refused
	res.Busy.Mark += markBusy
	return err
}

// prepare turns due rows into jobs (or adoption plans, for rows managed
// after a certificate was already issued for their SAN set).
func (s *Scheduler) prepare(now time.Time, rows []dueRow) *batch {
	b := &batch{msgs: make([]kafka.Message, 0, len(rows)), emit: make([]dueRow, 0, len(rows)), reasons: map[string]int{}}
	for _, r := range rows {
		c, has := r.cert, r.has
		if has && r.basis == BasisNew && r.requestID == "" && c.notAfter.After(now) {
			// Managed after a certificate was already issued for the SAN set:
			// plan its renewal instead of ordering a new one now.
			p := planRenewal(s.cfg.Policy, now, &certLife{c.notBefore, c.notAfter}, nil, draw(r.identity, c.ariID))
			if p.RenewAt.After(now) {
				b.adopt, b.plans = append(b.adopt, r), append(b.plans, p)
				continue
			}
		}
		r.jobID = RequestID(r.identity, r.planned)
		req := &events.IssuanceRequest{
			RequestID: r.jobID, SANs: r.sans, Tenant: r.tenant,
			KeyType: events.KeyType(r.keyType), CA: r.ca, Profile: r.profile, Reason: events.ReasonNew, Priority: 5,
		}
		label := "new"
		if has {
			req.Reason, req.Priority, label = events.ReasonRenewal, 3, "renewal"
			if c.notAfter.After(now) {
				req.Replaces = c.ariID
			}
			switch r.basis {
			case BasisEmergency:
				req.Priority = 8
			case BasisIncident:
				// The CA asked for a replacement now (its ARI window is in
				// the past): out of schedule, first in every queue.
				req.Reason, req.Priority, label = events.ReasonReissue, events.MaxPriority, "incident"
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
		msg.Topic = s.cfg.Topics.Requests // the fencing header is added when written
		b.msgs = append(b.msgs, msg)
		b.emit = append(b.emit, r)
		b.reasons[label]++
	}
	return b
}

// selection hands out the rows a tick emits, at most n, in batches: the
// incident lane first, then routine rows due by now; within each, max-min
// fair across tenants. Each round gives every tenant still holding due rows
// (in a rotating order, at most one batch's worth of tenants per round) an
// equal share of one batch, read after its keyset cursor; tenants with fewer
// rows than their share leave theirs to the others. The start tenant rotates
// per tick, so the remainder of an uneven split does not always favour the
// same tenants. Only one round's rows are held at a time.
type selection struct {
	s       *Scheduler
	now     time.Time
	left    int         // rows the budget still allows
	lanes   []time.Time // the upper bounds of next_renewal_at, lane by lane
	tenants []string    // every tenant, in this tick's order
	active  []string    // tenants that may still have rows due in the current lane
	cur     map[string]cursor
	more    bool // rows were left due when the budget ran out
}

type cursor struct {
	at time.Time
	id string
}

// newSelection lists the tenants; nil when there are none.
func (s *Scheduler) newSelection(ctx context.Context, now time.Time, n int) (*selection, error) {
	trows, err := s.cfg.DB.Pool().Query(ctx, listTenants)
	if err != nil {
		return nil, fmt.Errorf("scheduler: tick: tenants: %w", err)
	}
	tenants, err := pgx.CollectRows(trows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("scheduler: tick: tenants: %w", err)
	}
	if len(tenants) == 0 {
		return nil, nil
	}
	rot := int(s.ticks.Add(1) % uint64(len(tenants)))
	tenants = append(tenants[rot:], tenants[:rot]...)
	sel := &selection{s: s, now: now, left: n, lanes: []time.Time{IncidentDue, now}, tenants: tenants,
		cur: make(map[string]cursor, len(tenants))}
	for _, t := range tenants {
		sel.cur[t] = cursor{epoch, ""}
	}
	sel.active = slices.Clone(tenants)
	return sel, nil
}

// next returns the next at most max rows, none when the tick is done.
func (sel *selection) next(ctx context.Context, max int) ([]dueRow, error) {
	for sel.left > 0 && len(sel.lanes) > 0 {
		if len(sel.active) == 0 {
			// This lane is done; the cursors carry over to the next one.
			sel.lanes = sel.lanes[1:]
			sel.active = slices.Clone(sel.tenants)
			continue
		}
		rows, err := sel.round(ctx, min(sel.left, max))
		if err != nil {
			return nil, err
		}
		if len(rows) > 0 {
			sel.left -= len(rows)
			if sel.left == 0 {
				sel.more = sel.mayHaveMore()
			}
			return rows, nil
		}
	}
	return nil, nil
}

// mayHaveMore reports whether rows may still be due when the budget is
// spent: a tenant of the current lane that may hold more, or a later lane.
func (sel *selection) mayHaveMore() bool {
	return len(sel.active) > 0 || len(sel.lanes) > 1
}

// round reads one share per queried tenant of the current lane and picks up
// to want rows from them, round-robin.
func (sel *selection) round(ctx context.Context, want int) ([]dueRow, error) {
	q := sel.active[:min(len(sel.active), want)]
	share := (want + len(q) - 1) / len(q)
	ats, ids := make([]time.Time, len(q)), make([]string, len(q))
	for i, t := range q {
		ats[i], ids[i] = sel.cur[t].at, sel.cur[t].id
	}
	rs, err := sel.s.cfg.DB.Pool().Query(ctx, dueByTenant, q, ats, ids, sel.lanes[0], share)
	if err != nil {
		return nil, fmt.Errorf("scheduler: tick: due rows: %w", err)
	}
	got := make(map[string][]dueRow, len(q))
	for rs.Next() {
		var r dueRow
		var basis string
		var ariID *string
		var nb, na *time.Time
		if err := rs.Scan(&r.identity, &r.sans, &r.tenant, &r.ca, &r.profile, &r.keyType, &r.due, &r.planned, &r.requestID,
			&basis, &ariID, &nb, &na); err != nil {
			rs.Close()
			return nil, fmt.Errorf("scheduler: tick: due rows: %w", err)
		}
		r.basis = Basis(basis)
		if ariID != nil && nb != nil && na != nil {
			r.has, r.cert = true, issued{*ariID, *nb, *na}
		}
		got[r.tenant] = append(got[r.tenant], r)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("scheduler: tick: due rows: %w", err)
	}
	picked := make([]dueRow, 0, want)
	taken := make(map[string]int, len(q))
	for i := 0; len(picked) < want; i++ {
		progressed := false
		for _, t := range q {
			if i < len(got[t]) && len(picked) < want {
				picked = append(picked, got[t][i])
				taken[t]++
				progressed = true
			}
		}
		if !progressed {
			break
		}
	}
	// Tenants not queried this round go first in the next; a queried one
	// stays if it may hold more (a full share, or rows read but not picked).
	next := slices.Clone(sel.active[len(q):])
	for _, t := range q {
		if k := taken[t]; k > 0 {
			last := got[t][k-1]
			sel.cur[t] = cursor{last.due, last.identity}
		}
		if len(got[t]) == share || taken[t] < len(got[t]) {
			next = append(next, t)
		}
	}
	sel.active = next
	return picked, nil
}
func (s *Scheduler) markEmitted(ctx context.Context, now time.Time, ls LeaseState, rows []dueRow) (int, error) {
	n := len(rows)
	ids, reqs := make([]string, n), make([]string, n)
	dues, planned := make([]time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		ids[i], dues[i], reqs[i], planned[i] = r.identity, r.due, r.jobID, r.planned
	}
	return countUpdated(ctx, s, markEmitted, ids, now, now.Add(s.cfg.Watchdog), ls.Token, dues, reqs, planned,
		LeaseName, s.cfg.Holder)
}

func (s *Scheduler) markAdopted(ctx context.Context, ls LeaseState, rows []dueRow, plans []renewalPlan) (int, error) {
	n := len(rows)
	ids, bases, aris := make([]string, n), make([]string, n), make([]string, n)
	dues, renew, nb, na := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		ids[i], dues[i], renew[i], bases[i] = r.identity, r.due, plans[i].RenewAt, string(plans[i].Basis)
		aris[i], nb[i], na[i] = r.cert.ariID, r.cert.notBefore, r.cert.notAfter
	}
	return countUpdated(ctx, s, markAdopted, ids, ls.Token, dues, renew, bases, aris, nb, na, LeaseName, s.cfg.Holder)
}

// countUpdated runs a mark and returns how many rows it changed: the
// command tag's count, so no row is sent back.
func countUpdated(ctx context.Context, s *Scheduler, sql string, args ...any) (int, error) {
	tag, err := s.cfg.DB.Pool().Exec(ctx, sql, args...)
	if err != nil {
		return 0, fmt.Errorf("scheduler: mark: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
