-- 0007: dead letters replayed by `certfleet dlq replay` (owned by internal/dlqreplay). One row per
-- DLQ record (its topic, partition and offset): replay claims the row before it writes the
-- record back and marks it sent after, so `--all` never sends a record twice and who replayed
-- what, when and where stays on record. A claim whose replay died before sending expires at
-- claim_until. A row whose value_sha256 differs from the record now at that position (the DLQ
-- topic was re-created) does not count. Runs unchanged on PostgreSQL 15 and CockroachDB,
-- idempotent.
CREATE TABLE IF NOT EXISTS dlq_replays (
    dlq_topic     TEXT        NOT NULL,
    dlq_partition BIGINT      NOT NULL,
    dlq_offset    BIGINT      NOT NULL,
    destination   TEXT        NOT NULL,  -- the requests or retry topic it was written to
    event_id      TEXT        NOT NULL,  -- its ce_id
    value_sha256  TEXT        NOT NULL,  -- hex SHA-256 of the record's value
    replay_id     UUID        NOT NULL,  -- the replay run that claimed it
    replayed_by   TEXT        NOT NULL,  -- user@host of that run
    replayed_at   TIMESTAMPTZ NOT NULL,
    claim_until   TIMESTAMPTZ NOT NULL,  -- an unsent claim may be taken over after this
    sent_at       TIMESTAMPTZ,           -- NULL until the write to destination succeeded
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
-- Marking a run's rows sent, or forgetting them when its write failed.
CREATE INDEX IF NOT EXISTS dlq_replays_replay_idx ON dlq_replays (replay_id);
