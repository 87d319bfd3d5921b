package retention_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/certfleet/certfleet/db"
	"github.com/certfleet/certfleet/internal/clock"
	"github.com/certfleet/certfleet/internal/dbtest"
	"github.com/certfleet/certfleet/retention"
)

const day = 24 * time.Hour

func open(t *testing.T) *db.DB {
	t.Helper()
	return dbtest.Migrated(t, 0)
}

func exec(t *testing.T, d *db.DB, sql string, args ...any) {
	t.Helper()
	if _, err := d.Pool().Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", strings.Fields(sql)[2], err)
	}
}

// keys returns the first column of every row of query, sorted.
func keys(t *testing.T, d *db.DB, query string) []string {
	t.Helper()
	rows, err := d.Pool().Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// One pass with the default ages, in batches of 2, against rows on both sides
// of every age: what is past its age is gone (expired keys destroyed, their
// rows kept), what is younger, in use or still needed stays; audit events
// stay until an audit age is set.
func TestOncePrunesPastTheirAgeOnly(t *testing.T) {
	d := open(t)
	now := time.Now().UTC().Truncate(time.Second)
	ns := func(off time.Duration) int64 { return now.Add(off).UnixNano() }
	at := func(off time.Duration) time.Time { return now.Add(off) }

	// Buckets: full and idle for 2 days (4 of them, two batches), a full one
	// spent (or refunded) an hour ago, one in debt, one under a penalty.
	for i := range 4 {
		exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ($1, $2, $3)`, fmt.Sprintf("idle-%d", i), ns(-2*day), at(-2*day))
	}
	exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ('recent-spend', $1, $2)`, ns(-2*day), at(-time.Hour))
	exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ('in-debt', $1, $2)`, ns(time.Hour), at(-2*day))
	exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, penalty_until_ns, updated_at) VALUES ('penalised', $1, $2, $3)`, ns(-2*day), ns(time.Hour), at(-2*day))

	// Requests (60 days).
	req := func(id, state string, updated time.Time, ownerUntil *time.Time) {
		exec(t, d, `INSERT INTO issuance_requests (request_id, identity, state, owner_until, updated_at) VALUES ($1, 'i', $2, $3, $4)`, id, state, ownerUntil, updated)
	}
	old := at(-61 * day)
	req("succeeded-old", "succeeded", old, nil)
	req("failed-old", "failed", old, nil)
	req("released-old", "released", old, nil)
	req("abandoned-claim", "ordering", old, &old)
	req("succeeded-young", "succeeded", at(-10*day), nil)
	live := at(time.Minute)
	req("live-claim", "ordering", old, &live)

	// Certificates: key grace 30 days, rows 400 days.
	cert := func(name string, notAfter time.Time) {
		exec(t, d, `INSERT INTO issued_certificates (id, identity, request_id, serial, ari_cert_id, not_before, not_after, chain_pem, sealed_key)
VALUES ($1, $2, $2, $2, $2, $3, $4, 'chain', $5)`, uuid.New(), name, notAfter.Add(-90*day), notAfter, []byte("sealed-"+name))
	}
	cert("valid", at(60*day))
	cert("expired-10d", at(-10*day))
	cert("expired-40d", at(-40*day))
	cert("expired-401d", at(-401*day))

	// Outbox (7 days after publication), DLQ replays (45 days), DNS-01 rows (30 days past expiry).
	outbox := func(key string, created time.Time, published *time.Time) {
		exec(t, d, `INSERT INTO ratelimit_outbox (id, topic, msg_key, payload, created_at, published_at) VALUES ($1, 't', $2, '{}', $3, $4)`, uuid.New(), key, created, published)
	}
	p8, p1 := at(-8*day), at(-day)
	outbox("relayed-8d", at(-8*day), &p8)
	outbox("relayed-1d", at(-day), &p1)
	outbox("pending-30d", at(-30*day), nil)
	replay := func(off int64, replayed time.Time, sent *time.Time) {
		exec(t, d, `INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, destination, event_id, value_sha256, replay_id, replayed_by, replayed_at, claim_until, sent_at)
VALUES ('dlq', 0, $1, 'req', 'e', 'h', $2, 'op@h', $3, $4, $5)`, off, uuid.New(), replayed, replayed.Add(time.Minute), sent)
	}
	r46 := at(-46 * day)
	replay(1, r46, &r46)
	replay(2, r46, nil) // its claim expired long ago
	r10 := at(-10 * day)
	replay(3, r10, &r10)
	dns := func(name string, expires time.Time) {
		exec(t, d, `INSERT INTO acme_dns01_records (name, value, zone, provider, expires_at) VALUES ($1, 'v', 'z', 'p', $2)`, name, expires)
	}
	dns("expired-31d", at(-31*day))
	dns("expired-1d", at(-day))

	exec(t, d, `INSERT INTO audit_events (id, at, action, db_user, db_role, os_user, subject, tenant, sans, ca, account, serial, detail)
VALUES ($1, $2, 'penalty_clear', 'u', 'u', '', 'old', '', '{}', '', '', '', '{}')`, uuid.New(), at(-10*365*day))

	p, err := retention.New(retention.Config{DB: d, Ages: retention.DefaultAges(), Batch: 2, Pause: time.Millisecond, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := p.Once(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wantRep := retention.Report{
		retention.KindIdleBuckets: 4, retention.KindEndedRequests: 4, retention.KindKeysShredded: 2, retention.KindExpiredCerts: 1,
		retention.KindRelayedOutbox: 1, retention.KindDLQReplays: 2, retention.KindDNS01Records: 1,
	}
	for k, n := range wantRep {
		if rep[k] != n {
			t.Errorf("report %s = %d; want %d (report %v)", k, rep[k], n, rep)
		}
	}
	if _, ok := rep[retention.KindAudit]; ok {
		t.Errorf("audit pruned without an audit age: %v", rep)
	}

	for _, tc := range []struct {
		what, query string
		want        []string
	}{
		{"buckets", `SELECT bucket_key FROM ratelimit_buckets`, []string{"in-debt", "penalised", "recent-spend"}},
		{"requests", `SELECT request_id FROM issuance_requests`, []string{"live-claim", "succeeded-young"}},
		{"certificates", `SELECT identity FROM issued_certificates`, []string{"expired-10d", "expired-40d", "valid"}},
		{"certificates with a key", `SELECT identity FROM issued_certificates WHERE length(sealed_key) > 0`, []string{"expired-10d", "valid"}},
		{"outbox", `SELECT msg_key FROM ratelimit_outbox`, []string{"pending-30d", "relayed-1d"}},
		{"dlq replays", `SELECT dlq_offset::TEXT FROM dlq_replays`, []string{"3"}},
		{"dns-01 records", `SELECT name FROM acme_dns01_records`, []string{"expired-1d"}},
		{"audit", `SELECT subject FROM audit_events`, []string{"old"}},
	} {
		if got := keys(t, d, tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("%s left: %v; want %v", tc.what, got, tc.want)
		}
	}

	// A second pass finds nothing more; with an audit age the old event goes.
	ages := retention.DefaultAges()
	ages.Audit = 365 * day
	p, err = retention.New(retention.Config{DB: d, Ages: ages, Batch: 2, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = p.Once(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range rep {
		if want := map[string]int64{retention.KindAudit: 1}[k]; n != want {
			t.Errorf("second pass pruned %d %s; want %d", n, k, want)
		}
	}
	if got := keys(t, d, `SELECT subject FROM audit_events`); len(got) != 0 {
		t.Errorf("audit events left with a 365-day age: %v", got)
	}
}

// Idle buckets are found by walking the primary key, not through an index on
// their TAT: batches that scan only buckets still in use (here the first
// three, a batch and a half) do not end the pass, and the idle ones after
// them, in key order, go.
func TestIdleBucketsWalkPastBucketsInUse(t *testing.T) {
	d := open(t)
	now := time.Now().UTC().Truncate(time.Second)
	for i := range 3 {
		exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ($1, $2, $3)`,
			fmt.Sprintf("a-spent-%d", i), now.Add(-2*day).UnixNano(), now.Add(-time.Hour))
	}
	for i := range 3 {
		exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ($1, $2, $3)`,
			fmt.Sprintf("b-idle-%d", i), now.Add(-2*day).UnixNano(), now.Add(-2*day))
	}
	p, err := retention.New(retention.Config{DB: d, Ages: retention.Ages{IdleBuckets: day}, Batch: 2, Pause: time.Millisecond, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := p.Once(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep[retention.KindIdleBuckets] != 3 {
		t.Errorf("report %v; want 3 idle buckets", rep)
	}
	if got, want := keys(t, d, `SELECT bucket_key FROM ratelimit_buckets`), []string{"a-spent-0", "a-spent-1", "a-spent-2"}; !slices.Equal(got, want) {
		t.Errorf("buckets left: %v; want %v", got, want)
	}
}

// Only the lease holder prunes: a process that does not lead prunes
// nothing, and a pass stops at the batch after the lease is lost.
func TestRunPrunesOnlyAsLeader(t *testing.T) {
	d := open(t)
	now := time.Now().UTC()
	for i := range 6 {
		exec(t, d, `INSERT INTO ratelimit_buckets (bucket_key, tat_ns, updated_at) VALUES ($1, $2, $3)`, fmt.Sprintf("idle-%d", i), now.Add(-2*day).UnixNano(), now.Add(-2*day))
	}
	count := func() int { return len(keys(t, d, `SELECT bucket_key FROM ratelimit_buckets`)) }
	fake := clock.NewFake(now)
	p, err := retention.New(retention.Config{DB: d, Ages: retention.Ages{IdleBuckets: day}, Batch: 2, Pause: time.Millisecond, Clock: fake})
	if err != nil {
		t.Fatal(err)
	}

	// Another process leads: Run makes no pass.
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	follower := retention.LeaderFunc(func(context.Context) (time.Time, error) {
		if calls.Add(1) == 3 {
			cancel()
		}
		return time.Time{}, nil
	})
	if err := p.Run(ctx, follower, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 6 {
		t.Fatalf("a follower pruned: %d buckets left of 6", n)
	}

	// The lease is lost after the first batch: the pass stops there.
	leads := 0
	stillLeader := func(context.Context) bool { leads++; return leads == 1 }
	rep, err := p.Once(context.Background(), stillLeader)
	if !errors.Is(err, retention.ErrNotLeader) || rep[retention.KindIdleBuckets] != 2 || count() != 4 {
		t.Fatalf("pass after losing the lease: err %v, report %v, %d left; want ErrNotLeader after one batch of 2, 4 left", err, rep, count())
	}

	// The leader, whose lease has 10 s left (below the renewal margin), renews
	// it before pruning and prunes the rest.
	ctx, cancel = context.WithCancel(context.Background())
	calls.Store(0)
	leader := retention.LeaderFunc(func(context.Context) (time.Time, error) {
		if calls.Add(1) > 1 && count() == 0 {
			cancel()
		}
		return fake.Now().Add(10 * time.Second * time.Duration(calls.Load())), nil
	})
	if err := p.Run(ctx, leader, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("the leader left %d idle buckets", n)
	}
}

// New refuses ages that would lose what is still needed.
func TestNewRefusesUnsafeConfig(t *testing.T) {
	d := &db.DB{}
	for _, tc := range []struct {
		name string
		mod  func(*retention.Config)
		want string
	}{
		{"no database", func(c *retention.Config) { c.DB = nil }, "DB is nil"},
		{"requests younger than the DLQ keeps", func(c *retention.Config) { c.Ages.EndedRequests = 7 * day }, "Ages.EndedRequests"},
		{"rows before their keys", func(c *retention.Config) { c.Ages.ExpiredCerts = 10 * day }, "Ages.ExpiredCerts"},
		{"negative age", func(c *retention.Config) { c.Ages.Audit = -day }, "Ages.Audit is negative"},
		{"huge batch", func(c *retention.Config) { c.Batch = 1_000_000 }, "Batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := retention.Config{DB: d, Ages: retention.DefaultAges()}
			tc.mod(&cfg)
			if _, err := retention.New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want it to name %q", err, tc.want)
			}
		})
	}
	if _, err := retention.New(retention.Config{DB: d, Ages: retention.DefaultAges()}); err != nil {
		t.Fatalf("the defaults are refused: %v", err)
	}
}
