-- 0019: tenant usage of the lanes (owned by package internal/lanesignal, written and read by issuer-workers).
-- A row is one worker's recent order slots for one tenant in one lane, decayed by the workers'
-- half-life and valid as of at. Every worker replaces its rows about once a second and reads the
-- others' for the tenants it holds, so the fair share inside a lane counts the whole fleet's
-- grants, not only its own. Rows of a worker that stopped decay to nothing; any worker's report
-- deletes rows older than an hour.
-- Runs unchanged on PostgreSQL 15 and CockroachDB; idempotent.
CREATE TABLE IF NOT EXISTS lane_usage (
    tenant TEXT        NOT NULL,
    lane   TEXT        NOT NULL,
    worker TEXT        NOT NULL,
    usage  FLOAT8      NOT NULL,
    at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, lane, worker)
);
