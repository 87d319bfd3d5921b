-- 0016: fewer index writes on the two hottest UPDATE paths. Runs unchanged on PostgreSQL 15 and
-- CockroachDB, every statement idempotent.
--
-- A PostgreSQL UPDATE that changes an indexed column (or has no room on the row's page) writes a
-- new entry into EVERY index of the table; one that changes only unindexed columns and fits on
-- the page is a HOT update and writes none. CockroachDB writes a secondary index only when its
-- columns change, so dropping an index there saves that index's writes and its storage.

-- managed_certificates: each emission moves next_renewal_at (indexed), so each marked row gets a
-- new entry in every index. managed_certificates_tenant_idx (tenant, identity) has no reader the
-- tenant_due_idx (tenant, next_renewal_at, identity) does not serve as well: its only readers are
-- the tick's loose scan of distinct tenants (tenant = leading column of tenant_due_idx) and
-- nothing reads it by (tenant, identity). Five index writes per marked row become four.
DROP INDEX IF EXISTS managed_certificates_tenant_idx;

-- ratelimit_buckets: every spend moves tat_ns. Its index had one reader, retention's prune of
-- idle buckets, which now walks the primary key in key order instead (retention/retention.go).
-- With no index on tat_ns or updated_at, a spend changes no indexed column and can be a HOT
-- update: the lookup is by primary key, the penalty listing keeps ratelimit_buckets_penalty_idx
-- (penalty_until_ns changes only when the CA answers 429).
DROP INDEX IF EXISTS ratelimit_buckets_tat_idx;
-- Room on each page for the new version of a bucket, so the HOT update stays on its page.
-- Applies to pages written from now on. CockroachDB accepts fillfactor and ignores it.
ALTER TABLE ratelimit_buckets SET (fillfactor = 70);
