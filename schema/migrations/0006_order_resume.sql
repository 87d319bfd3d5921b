-- 0006: the order in flight for an issuance request (owned by package certstore, written by the
-- pipeline). A worker records the CA's order URL and the certificate key (sealed, never in the
-- clear) as soon as the CA has created the order; if it dies, the worker that claims the request
-- next continues that order instead of placing a second one. Both are cleared when the request
-- ends. Runs unchanged on PostgreSQL 15 and CockroachDB; idempotent.
ALTER TABLE issuance_requests ADD COLUMN IF NOT EXISTS order_url TEXT;
ALTER TABLE issuance_requests ADD COLUMN IF NOT EXISTS order_key BYTEA;
