-- 0002: rate limiting (owned by package ratelimit). Runs unchanged on PostgreSQL 15 and
-- CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ, app-generated UUIDs, explicit indexes,
-- every statement idempotent.

-- One GCRA bucket per key ("<ca id>:<limit name>:<value>"). Times are Unix nanoseconds so
-- the spend condition is integer arithmetic the same on both servers.
CREATE TABLE IF NOT EXISTS ratelimit_buckets (
    bucket_key       TEXT        NOT NULL PRIMARY KEY,
    tat_ns           BIGINT      NOT NULL,             -- theoretical arrival time
    penalty_until_ns BIGINT      NOT NULL DEFAULT 0,   -- CA said 429 until then (0: none)
    last_granted     BIGINT      NOT NULL DEFAULT 0,   -- spends granted by the last single-bucket statement
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Penalty listing and garbage collection of full buckets read through these.
CREATE INDEX IF NOT EXISTS ratelimit_buckets_penalty_idx ON ratelimit_buckets (penalty_until_ns);
CREATE INDEX IF NOT EXISTS ratelimit_buckets_tat_idx ON ratelimit_buckets (tat_ns);

-- Operator-managed overrides of a limit for an exact key or a wildcard pattern.
CREATE TABLE IF NOT EXISTS ratelimit_overrides (
    id          UUID        NOT NULL PRIMARY KEY,
    limit_name  TEXT        NOT NULL,
    key_pattern TEXT        NOT NULL,                 -- exact key, or *.example.com
    limit_count BIGINT      NOT NULL CHECK (limit_count > 0),
    period_ns   BIGINT      NOT NULL CHECK (period_ns > 0),
    burst       BIGINT      NOT NULL CHECK (burst > 0),
    valid_from  TIMESTAMPTZ NOT NULL,
    valid_until TIMESTAMPTZ,                          -- NULL: open ended
    enabled     BOOLEAN     NOT NULL DEFAULT true,
    comment     TEXT        NOT NULL DEFAULT '',
    created_by  TEXT        NOT NULL,
    version     BIGINT      NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Serves the batched lookup: limit_name = $1 AND key_pattern = ANY($2) AND valid_from <= now.
CREATE INDEX IF NOT EXISTS ratelimit_overrides_lookup_idx
    ON ratelimit_overrides (limit_name, key_pattern, valid_from);

-- Every change to an override, kept forever.
CREATE TABLE IF NOT EXISTS ratelimit_override_audit (
    id          UUID        NOT NULL PRIMARY KEY,
    override_id UUID        NOT NULL,
    action      TEXT        NOT NULL,                 -- create | update | disable | delete
    actor       TEXT        NOT NULL,
    version     BIGINT      NOT NULL,                 -- version after the change
    before_json JSONB,
    after_json  JSONB,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ratelimit_override_audit_override_idx ON ratelimit_override_audit (override_id, at);

-- Change notifications, written in the same transaction as the change and published to
-- Kafka (certfleet.ratelimit.changes) by the relay.
CREATE TABLE IF NOT EXISTS ratelimit_outbox (
    id           UUID        NOT NULL PRIMARY KEY,
    topic        TEXT        NOT NULL,
    msg_key      TEXT        NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS ratelimit_outbox_pending_idx ON ratelimit_outbox (published_at, created_at);
