-- CockroachDB row-level TTL for the tables the retention job prunes (package retention; ages in
-- docs/architecture.md, "Retention"). Optional: the job (run by the schedulers, one at a time on
-- their lease, in batches) prunes the same rows on PostgreSQL and CockroachDB alike. On CockroachDB
-- the TTL job can do the deleting instead, inside the cluster and paced by it; then turn the job's
-- kinds these tables cover off in the scheduler's ConfigMap, so both do not work on the same rows:
--
--   CERTFLEET_RETENTION_IDLE_BUCKETS: "0s"          CERTFLEET_RETENTION_ENDED_REQUESTS: "0s"
--   CERTFLEET_RETENTION_EXPIRED_CERTIFICATES: "0s"  CERTFLEET_RETENTION_RELAYED_OUTBOX: "0s"
--   CERTFLEET_RETENTION_DLQ_REPLAYS: "0s"           CERTFLEET_RETENTION_DNS01_RECORDS: "0s"
--
-- Keep CERTFLEET_RETENTION_KEY_GRACE on (720h): a TTL deletes rows, it cannot empty a column, so
-- destroying the sealed keys of expired certificates 30 days after they expire (crypto-shredding,
-- the row kept) stays the job's. Run once per cluster, after 'certfleet migrate', as a user that may
-- ALTER these tables:
--   cockroach sql --url "$CERTFLEET_DATABASE_URL" -f deploy/cockroachdb/retention.sql
-- Needs CockroachDB 22.2 or later (ttl_expiration_expression). A row whose expression is NULL is
-- never expired. Each expression below is the job's condition turned into an expiry time, with the
-- job's default ages; change an age in both places. Not run by the tests here (no CockroachDB can be
-- installed on the test machines); deploy/manifests_test.go checks that every table and column named
-- exists in schema/migrations.

-- A bucket is full once its TAT (Unix ns) has passed; it goes a day after that, after its last
-- change and after any penalty (a missing bucket is a full one, so nothing a limit decides changes).
ALTER TABLE ratelimit_buckets SET (
    ttl_expiration_expression = $$(GREATEST(updated_at, to_timestamp(GREATEST(tat_ns, penalty_until_ns)::FLOAT8 / 1e9)) + INTERVAL '1 day')$$,
    ttl_job_cron = '@hourly'
);

-- Ended requests 60 days after their last change; a claim 60 days after its lease ran out. Other
-- states never expire. At least 31 days: a dead letter replayed within the DLQ's 30 days must find
-- its request's outcome, or the certificate is ordered again.
ALTER TABLE issuance_requests SET (
    ttl_expiration_expression = $$(CASE WHEN state IN ('succeeded', 'failed', 'released') THEN updated_at + INTERVAL '60 days' WHEN state = 'ordering' AND owner_until IS NOT NULL THEN GREATEST(updated_at, owner_until) + INTERVAL '60 days' END)$$,
    ttl_job_cron = '@daily'
);

-- Certificate rows 400 days after they expired (their keys were destroyed at 30 days by the job).
ALTER TABLE issued_certificates SET (
    ttl_expiration_expression = $$(not_after + INTERVAL '400 days')$$,
    ttl_job_cron = '@daily'
);

-- Outbox rows 7 days after they were written: with deploy/cockroachdb/changefeed.sql publishing
-- the table, published_at is never set, so the age counts from the insert the changefeed emitted.
ALTER TABLE ratelimit_outbox SET (
    ttl_expiration_expression = $$(created_at + INTERVAL '7 days')$$,
    ttl_job_cron = '@daily'
);

-- Dead-letter replay records 45 days after the replay (or after an unsent claim expired): the DLQ
-- keeps a record 30 days, so no replay can ask about it afterwards.
ALTER TABLE dlq_replays SET (
    ttl_expiration_expression = $$(GREATEST(replayed_at, claim_until) + INTERVAL '45 days')$$,
    ttl_job_cron = '@daily'
);

-- DNS-01 record rows 30 days after they expired: the workers remove an expired record (and its row)
-- within minutes, so a row this old is one whose TXT record could not be removed.
ALTER TABLE acme_dns01_records SET (
    ttl_expiration_expression = $$(expires_at + INTERVAL '30 days')$$,
    ttl_job_cron = '@daily'
);

-- audit_events is kept for ever by default (the application role needs no DELETE on it; see
-- deploy/README.md, "Audit trail"). To keep two years, for example, run this instead of setting
-- CERTFLEET_RETENTION_AUDIT:
--   ALTER TABLE audit_events SET (ttl_expiration_expression = $$(at + INTERVAL '730 days')$$, ttl_job_cron = '@daily');
