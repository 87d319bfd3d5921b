-- 0017: lane signals (owned by package internal/lanesignal, written and read by issuer-workers).
-- A row says that requests of a lane were waiting for the fleet budget until active_until,
-- somewhere in the fleet: workers hold lower lanes back until then, so a higher lane's
-- requests get the budget first fleet-wide, not only inside each worker.
-- Runs unchanged on PostgreSQL 15 and CockroachDB; idempotent.
CREATE TABLE IF NOT EXISTS lane_signals (
    lane         TEXT        NOT NULL PRIMARY KEY,
    active_until TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
