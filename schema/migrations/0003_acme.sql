-- 0003: ACME HTTP-01 challenge responses (owned by package acmeissuer). Runs unchanged on
-- PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ, explicit indexes,
-- every statement idempotent. acme_accounts (0001) is also written by acmeissuer.

-- One row per pending HTTP-01 challenge: any worker's /.well-known/acme-challenge/{token}
-- handler answers from here, so the CA may reach whichever worker its request lands on.
CREATE TABLE IF NOT EXISTS acme_http01_challenges (
    token             TEXT        NOT NULL PRIMARY KEY,   -- the challenge token (base64url)
    key_authorization TEXT        NOT NULL,               -- token || '.' || account key thumbprint
    identifier        TEXT        NOT NULL DEFAULT '',    -- the domain being validated (diagnostics)
    expires_at        TIMESTAMPTZ NOT NULL,               -- served until then; garbage collected after
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Garbage collection of challenges whose cleanup never ran (crashed worker).
CREATE INDEX IF NOT EXISTS acme_http01_challenges_expires_idx ON acme_http01_challenges (expires_at);
