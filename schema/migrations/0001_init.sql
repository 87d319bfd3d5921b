-- 0001: certfleet's inventory, issued certificates, requests, ACME accounts and leases.
-- Runs unchanged on PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ,
-- app-generated ids, explicit indexes, every statement idempotent (IF NOT EXISTS) so a
-- crash between applying and recording a migration is harmless.

-- What operators asked for: one row per certificate to keep valid ("manage once").
CREATE TABLE IF NOT EXISTS managed_certificates (
    identity        TEXT        NOT NULL PRIMARY KEY, -- sha256 hex of the sorted, lower-cased SAN set
    sans            TEXT[]      NOT NULL,
    tenant          TEXT        NOT NULL DEFAULT '',
    ca_directory    TEXT        NOT NULL,
    profile         TEXT        NOT NULL DEFAULT '',
    key_type        TEXT        NOT NULL DEFAULT 'ecdsa-p256',
    next_renewal_at TIMESTAMPTZ NOT NULL,             -- when the scheduler should emit the next job
    ari_retry_at    TIMESTAMPTZ,                      -- when to fetch the ARI window again
    emitted_at      TIMESTAMPTZ,                      -- last job emitted for this row (NULL: none pending)
    failures        INT         NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The scheduler's tick reads only due rows: cost grows with what is due, not with the fleet.
CREATE INDEX IF NOT EXISTS managed_certificates_due_idx ON managed_certificates (next_renewal_at, identity);
CREATE INDEX IF NOT EXISTS managed_certificates_tenant_idx ON managed_certificates (tenant, identity);

-- Every certificate obtained, newest per identity found through the index.
CREATE TABLE IF NOT EXISTS issued_certificates (
    id           UUID        NOT NULL PRIMARY KEY,
    identity     TEXT        NOT NULL,
    request_id   TEXT        NOT NULL,
    serial       TEXT        NOT NULL,
    ari_cert_id  TEXT        NOT NULL,
    not_before   TIMESTAMPTZ NOT NULL,
    not_after    TIMESTAMPTZ NOT NULL,
    chain_pem    TEXT        NOT NULL,
    sealed_key   BYTEA       NOT NULL,                -- AES-256-GCM, prefixed with its key id
    issuer       TEXT        NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS issued_certificates_identity_idx ON issued_certificates (identity, not_after DESC);
CREATE UNIQUE INDEX IF NOT EXISTS issued_certificates_request_idx ON issued_certificates (request_id);

-- Idempotency: one row per issuance request id.
CREATE TABLE IF NOT EXISTS issuance_requests (
    request_id   TEXT        NOT NULL PRIMARY KEY,
    identity     TEXT        NOT NULL,
    state        TEXT        NOT NULL,                -- pending | ordering | succeeded | failed
    owner        TEXT        NOT NULL DEFAULT '',     -- worker holding it while ordering
    owner_until  TIMESTAMPTZ,
    attempts     INT         NOT NULL DEFAULT 0,
    outcome      BYTEA,                               -- the published event, re-sent on redelivery
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS issuance_requests_identity_idx ON issuance_requests (identity);

-- ACME accounts: one per (CA directory, tenant), registered once across the fleet.
CREATE TABLE IF NOT EXISTS acme_accounts (
    ca_directory TEXT        NOT NULL,
    tenant       TEXT        NOT NULL,
    account_url  TEXT        NOT NULL DEFAULT '',
    sealed_key   BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (ca_directory, tenant)
);

-- Leases with fencing tokens (scheduler leadership and similar singletons).
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT        NOT NULL PRIMARY KEY,
    holder     TEXT        NOT NULL,
    token      BIGINT      NOT NULL,                  -- fencing token, grows with each new holder
    expires_at TIMESTAMPTZ NOT NULL
);
