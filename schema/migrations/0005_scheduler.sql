-- 0005: scheduler state on managed_certificates (owned by package scheduler). Runs unchanged on
-- PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ, explicit indexes, every
-- statement idempotent (IF NOT EXISTS).
--
-- A row's life: next_renewal_at is when the tick must look at it next. planned_at is the renewal
-- time the next (or in-flight) job is for; the job's request id is derived from identity and
-- planned_at only, so re-emitting after a crash produces the same id. While a job is in flight,
-- request_id is set and next_renewal_at is a watchdog (re-emit the same id if no outcome came).
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS planned_at       TIMESTAMPTZ;
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS request_id       TEXT;
-- Highest leader fencing token that marked this row; a deposed leader (lower token) is refused.
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS fence_token      BIGINT NOT NULL DEFAULT 0;
-- The current certificate, learnt from cert_obtained events.
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS cert_ari_id      TEXT;
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS cert_not_before  TIMESTAMPTZ;
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS cert_not_after   TIMESTAMPTZ;
-- The CA's ARI suggested window, when known, and how next_renewal_at was chosen.
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS ari_window_start TIMESTAMPTZ;
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS ari_window_end   TIMESTAMPTZ;
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS renewal_basis    TEXT NOT NULL DEFAULT 'new';
ALTER TABLE managed_certificates ADD COLUMN IF NOT EXISTS last_error       TEXT NOT NULL DEFAULT '';

-- Tenant-fair selection: per tenant, the due rows in due order.
CREATE INDEX IF NOT EXISTS managed_certificates_tenant_due_idx
    ON managed_certificates (tenant, next_renewal_at, identity);
-- ARI re-checks read rows whose Retry-After has passed.
CREATE INDEX IF NOT EXISTS managed_certificates_ari_retry_idx
    ON managed_certificates (ari_retry_at);
