-- 0013: indexes the retention job (package retention) prunes through, so each bounded batch reads
-- only rows it may delete instead of scanning the table. ratelimit_buckets (tat_ns),
-- ratelimit_outbox (published_at), acme_dns01_records (expires_at) and audit_events (at) have
-- theirs already. Runs unchanged on PostgreSQL 15 and CockroachDB, idempotent.

-- Ended requests, by when they last changed.
CREATE INDEX IF NOT EXISTS issuance_requests_updated_idx ON issuance_requests (updated_at);
-- Certificates whose sealed key is still there, by expiry: keys to destroy after the grace.
-- Partial, so destroyed keys (tombstone rows kept until their own age) are never read again.
CREATE INDEX IF NOT EXISTS issued_certificates_keyed_expiry_idx ON issued_certificates (not_after) WHERE sealed_key <> ''::BYTEA;
-- Certificate rows by expiry, to delete them after their age.
CREATE INDEX IF NOT EXISTS issued_certificates_not_after_idx ON issued_certificates (not_after);
-- Dead-letter replay records by age.
CREATE INDEX IF NOT EXISTS dlq_replays_replayed_idx ON dlq_replays (replayed_at);
