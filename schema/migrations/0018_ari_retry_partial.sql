-- 0018: one index write fewer per emitted job. Runs unchanged on PostgreSQL 15 and CockroachDB,
-- every statement idempotent.
--
-- Every tick's mark moves next_renewal_at (indexed), so on PostgreSQL each marked row gets a new
-- entry in EVERY index of managed_certificates, managed_certificates_ari_retry_idx included,
-- although ari_retry_at is NULL for every row without a stored certificate (all new rows, and
-- rows whose CA has no ARI). The index's only reader (the ARI re-check, scheduler/ari.go) asks for
-- ari_retry_at <= $1 AND ari_retry_at IS NOT NULL, so a partial index without the NULLs serves it
-- as well. At 1,000,000 rows with none yet issued, EXPLAIN (ANALYZE, WAL) of the mark showed 6 WAL
-- records per marked row with the old index and 5 without it.
CREATE INDEX IF NOT EXISTS managed_certificates_ari_retry_nn_idx
    ON managed_certificates (ari_retry_at) WHERE ari_retry_at IS NOT NULL;
DROP INDEX IF EXISTS managed_certificates_ari_retry_idx;
