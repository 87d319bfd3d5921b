-- 0012: the audit trail (owned by package audit). One row per act an auditor asks about: a key
-- export, a dead letter replayed, a penalty cleared, an override created, updated, disabled or
-- deleted, and every certificate issued. Append-only: the application only INSERTs and SELECTs
-- (deploy/README.md shows the grants that enforce it); the retention job deletes rows only when an
-- operator sets an audit age (default: kept for ever). who is the database session's identity
-- (session_user and current_user, read by the INSERT itself), not a name the client asserts;
-- os_user is the client's own user@host, kept beside it for context. Runs unchanged on
-- PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ, app-generated UUIDs,
-- explicit indexes, every statement idempotent.
CREATE TABLE IF NOT EXISTS audit_events (
    id         UUID        NOT NULL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,             -- the database's now() at the INSERT
    action     TEXT        NOT NULL,             -- key_export | dlq_replay | penalty_clear | override_create | override_update | override_disable | override_delete | issuance
    db_user    TEXT        NOT NULL,             -- session_user: the role the connection authenticated as
    db_role    TEXT        NOT NULL,             -- current_user: the role the statement ran as
    os_user    TEXT        NOT NULL,             -- user@host the client reported ('' for workers' rows)
    subject    TEXT        NOT NULL,             -- what was acted on: identity, DLQ position, bucket key, override id
    tenant     TEXT        NOT NULL,
    sans       TEXT[]      NOT NULL,
    ca         TEXT        NOT NULL,             -- issuance: the CA's name; export: the certificate's issuer
    account    TEXT        NOT NULL,             -- issuance: the ACME account URL
    serial     TEXT        NOT NULL,
    detail     JSONB       NOT NULL              -- action-specific facts (never key material)
);
-- certfleet audit list: newest first, optionally one action.
CREATE INDEX IF NOT EXISTS audit_events_at_idx ON audit_events (at);
CREATE INDEX IF NOT EXISTS audit_events_action_idx ON audit_events (action, at);
