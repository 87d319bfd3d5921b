-- 0015: requests parked until due, and the rate-limit booking a deferred request holds (owned by
-- package certstore, written by the pipeline). A request that must wait longer than a worker should
-- hold it in memory (a limit's booked slot, another worker's claim, a producer's not_before) is
-- written here with its record and committed on Kafka; every worker relays due rows, oldest first,
-- to the retry topic (claiming a batch with a short lease, deleting each row after its write, so a
-- crash in between relays it again). The booking is kept on the request's claim row: the worker
-- that claims the request when its slot comes orders without spending again.
-- Runs unchanged on PostgreSQL 15 and CockroachDB; idempotent.
CREATE TABLE IF NOT EXISTS parked_requests (
    request_id  TEXT        NOT NULL PRIMARY KEY,
    version     UUID        NOT NULL,                -- a new park replaces the row; the relay deletes only what it wrote
    identity    TEXT        NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    record      BYTEA       NOT NULL,                -- the retry record to write (key, value, headers as JSON)
    relay_owner TEXT        NOT NULL DEFAULT '',
    relay_until TIMESTAMPTZ,                         -- a relay's claim on the row; expired: any relay takes it
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS parked_requests_due_idx ON parked_requests (due_at);
ALTER TABLE issuance_requests ADD COLUMN IF NOT EXISTS booked_ca TEXT;
ALTER TABLE issuance_requests ADD COLUMN IF NOT EXISTS booked_at TIMESTAMPTZ;
