-- 0009: CA failover. ca_health (owned by package cahealth) is the fleet's circuit breaker per CA:
-- consecutive failures of the CA being unavailable (5xx, timeouts, refused connections), and once
-- they reach the workers' threshold, how long it stays open (no new orders) before one worker at a
-- time may probe it (half-open). order_ca (owned by package certstore, written by the pipeline) is
-- the directory of the CA an order in flight was placed at, so the next owner continues it there
-- and never places it again at another CA; NULL on rows recorded before it (the request's own CA).
-- Runs unchanged on PostgreSQL 15 and CockroachDB, idempotent.
CREATE TABLE IF NOT EXISTS ca_health (
    ca          TEXT        NOT NULL PRIMARY KEY, -- the CA's name (-ca NAME=URL)
    failures    INT         NOT NULL DEFAULT 0,   -- consecutive unavailable answers; a success resets
    opens       INT         NOT NULL DEFAULT 0,   -- opens since it was last closed (the cooldown doubles)
    open_until  TIMESTAMPTZ,                      -- NULL: closed; later than now: open; else half-open
    probe_owner TEXT        NOT NULL DEFAULT '',  -- the job probing a half-open CA
    probe_until TIMESTAMPTZ,                      -- its probe lease: others keep off until then
    last_error  TEXT        NOT NULL DEFAULT '',
    failed_at   TIMESTAMPTZ,                      -- the last unavailable answer
    closed_at   TIMESTAMPTZ,                      -- the success that last closed it
    updated_at  TIMESTAMPTZ NOT NULL
);
ALTER TABLE issuance_requests ADD COLUMN IF NOT EXISTS order_ca TEXT;
