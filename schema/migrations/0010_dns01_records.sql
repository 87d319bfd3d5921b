-- 0010: DNS-01 records written through DNS providers (owned by package acmeissuer). A row is
-- written before its TXT record and deleted once the record is removed, so a record a crashed
-- worker left behind is found and removed by the next one: any worker removes the records of
-- expired rows, and a worker presenting a name first removes that name's expired records. Runs
-- unchanged on PostgreSQL 15 and CockroachDB: no SERIAL, no triggers, TIMESTAMPTZ, explicit
-- indexes, every statement idempotent.
CREATE TABLE IF NOT EXISTS acme_dns01_records (
    name       TEXT        NOT NULL,              -- absolute name of the TXT record (after CNAMEs)
    value      TEXT        NOT NULL,              -- its value (the key authorization digest: public in DNS)
    zone       TEXT        NOT NULL,              -- the zone it was written to
    provider   TEXT        NOT NULL,              -- the DNS-01 configuration's provider name
    identifier TEXT        NOT NULL DEFAULT '',   -- the domain being validated (diagnostics)
    expires_at TIMESTAMPTZ NOT NULL,              -- no order uses it after this; then it is removed
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, value)
);
CREATE INDEX IF NOT EXISTS acme_dns01_records_expires_idx ON acme_dns01_records (expires_at);
