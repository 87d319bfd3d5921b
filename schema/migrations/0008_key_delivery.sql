-- 0008: recipient-sealed key delivery (owned by package delivery; the tenant column of
-- issued_certificates by package certstore). A recipient is a public key (HPKE, P-256) and the
-- certificates it may receive; its private key never reaches the database. Every change is
-- audited. Runs unchanged on PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ,
-- app-generated UUIDs, explicit indexes, every statement idempotent.

CREATE TABLE IF NOT EXISTS delivery_recipients (
    name             TEXT        NOT NULL PRIMARY KEY,
    public_key       BYTEA       NOT NULL,             -- HPKE SerializePublicKey: a P-256 point, never a private key
    key_id           TEXT        NOT NULL,             -- hex SHA-256 of public_key
    tenants          TEXT[]      NOT NULL,             -- certificates of these tenants (empty: any tenant)
    sans_patterns    TEXT[]      NOT NULL,             -- whose every SAN matches one of these (empty: any names)
    version          BIGINT      NOT NULL DEFAULT 1,   -- grows with each rotation
    created_by       TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The current certificates are delivered to a recipient once after it is added or rotated,
    -- by whichever worker leases the backfill.
    backfill_pending BOOLEAN     NOT NULL DEFAULT true,
    backfill_owner   TEXT        NOT NULL DEFAULT '',
    backfill_until   TIMESTAMPTZ,
    backfilled_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS delivery_recipients_backfill_idx ON delivery_recipients (backfill_pending, updated_at);

-- Every change to a recipient (add, rotate, remove), kept after the recipient is removed.
CREATE TABLE IF NOT EXISTS delivery_recipient_audit (
    id            UUID        NOT NULL PRIMARY KEY,
    recipient     TEXT        NOT NULL,
    action        TEXT        NOT NULL,                -- add | rotate | remove
    actor         TEXT        NOT NULL,
    version       BIGINT      NOT NULL,                -- version after the change (before it, for remove)
    key_id        TEXT        NOT NULL,
    tenants       TEXT[]      NOT NULL,
    sans_patterns TEXT[]      NOT NULL,
    at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS delivery_recipient_audit_recipient_idx ON delivery_recipient_audit (recipient, at);

-- The tenant of each certificate, so deliveries (and backfills) match recipients by tenant.
-- Rows stored before this migration keep '' (the backfill then takes managed_certificates').
ALTER TABLE issued_certificates ADD COLUMN IF NOT EXISTS tenant TEXT NOT NULL DEFAULT '';
