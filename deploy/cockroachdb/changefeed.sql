-- The CockroachDB changefeed that feeds the rate-limit changes topic
-- (certfleet.ratelimit.changes) from the ratelimit_outbox table in production.
--
-- Run once per cluster as a user with the CHANGEFEED privilege, e.g.
--   cockroach sql --url "$CERTFLEET_DATABASE_URL" -f deploy/cockroachdb/changefeed.sql
-- after 'certfleet migrate' has created the table (schema/migrations/0002_ratelimit.sql).
-- Changefeeds into Kafka need rangefeeds on (self-hosted clusters) and a
-- CockroachDB license that includes changefeeds.
--
-- What it replaces. Every override change (ratelimit.OverrideStore) writes an
-- outbox row in the same transaction as the change: topic, msg_key (the
-- override id) and payload, the JSON of ratelimit.ChangeEvent:
--   {"override_id":"…","limit_name":"…","key":"…","action":"create|update|disable|delete","version":N,"at":"RFC 3339"}
-- On PostgreSQL (and on CockroachDB without this changefeed) the relay does
-- the publishing: every issuer-worker with -relay (CERTFLEET_RELAY=true, the
-- default) polls the table every 200 ms (ratelimit.Relay: SELECT the
-- unpublished rows ORDER BY created_at, id LIMIT 100), writes each payload
-- as the Kafka value, keyed by msg_key, with acks=all (changefeed.Publisher),
-- then sets published_at. At least once: a crash between the two publishes
-- again, and several relays publish duplicates; both are harmless.
-- With this changefeed running, set CERTFLEET_RELAY=false on the workers
-- (deploy/kubernetes/overlays/example does); otherwise every change is
-- published twice (harmless, but pointless).
--
-- Does the envelope match what changefeed.Consumer decodes? Yes for the
-- value, by construction below; no for the key. The consumer hands each
-- message value to ratelimit.OverrideCache.HandleChange, which JSON-decodes a
-- ChangeEvent (unknown fields ignored; limit_name must be a known limit, or
-- the whole cache is dropped and an error reported) and ignores the key.
--  * A plain changefeed on the table (CREATE CHANGEFEED FOR TABLE
--    ratelimit_outbox) would NOT match: its default "wrapped" envelope is
--    {"after": {"id": …, "topic": …, "msg_key": …, "payload": {…ChangeEvent…},
--    "created_at": …, "published_at": …}}, so limit_name is not at the top
--    level and every message would drop the worker's whole override cache.
--    Neither would "AS SELECT payload FROM ratelimit_outbox" ({"payload": {…}}).
--  * This CDC query (CockroachDB 23.1+) uses the bare envelope (the default
--    for CDC queries; set explicitly below): the value is the projected
--    columns at the top level,
--    and it projects exactly ChangeEvent's JSON fields, so the value is
--    {"override_id":…,"limit_name":…,"key":…,"action":…,"version":N,"at":…},
--    the same fields and types the relay sends (version a JSON number, at
--    the RFC 3339 string Go wrote). Field order may differ; JSON does not care.
--    Do not add the resolved, updated or mvcc_timestamp options: they add a
--    "__crdb__" field to rows (ignored) and resolved adds messages without
--    limit_name (each one would drop the caches and log an error).
--  * Differences that remain, all harmless for this consumer:
--    - Kafka key: the changefeed keys by the table's primary key as a JSON
--      array, ["<outbox row id>"], not msg_key (the override id), so the
--      changes of one override may land on different partitions and be read
--      out of order. The consumer reads every partition and only invalidates
--      the cache for the limit name (order does not matter); the 30 s cache
--      refresh backs it up.
--    - Topic: the changefeed writes to topic_name from the sink URI below,
--      not the row's topic column; keep it equal to the workers'
--      CERTFLEET_TOPIC_RATELIMIT_CHANGES.
--    - The relay marks rows published (published_at); the changefeed does
--      not, so rows stay with published_at NULL. Expire them with row-level
--      TTL (below), whose deletes the filter drops.
--    - At least once on both paths: a changefeed restart may re-emit rows.
--  * Filter: only rows still unpublished and not deletes, so a relay left
--    running (its UPDATE of published_at) or TTL deletes emit nothing.
--    initial_scan='no': older changes are already in the database, and the
--    consumer starts at the end of each partition anyway.
--
-- deploy/manifests_test.go checks that the projection names every JSON field
-- of ratelimit.ChangeEvent and that the topic matches ratelimit.ChangesTopic.

SET CLUSTER SETTING kv.rangefeed.enabled = true;

CREATE CHANGEFEED
  INTO 'kafka://kafka-0.kafka.kafka.svc:9092?topic_name=certfleet.ratelimit.changes'
  WITH
    envelope = 'bare',
    initial_scan = 'no',
    kafka_sink_config = '{"RequiredAcks": "ALL", "Flush": {"Frequency": "10ms"}}'
  AS SELECT
    payload->>'override_id'          AS override_id,
    payload->>'limit_name'           AS limit_name,
    payload->>'key'                  AS "key",
    payload->>'action'               AS action,
    (payload->>'version')::INT8      AS version,
    payload->>'at'                   AS at
  FROM ratelimit_outbox
  WHERE topic = 'certfleet.ratelimit.changes'
    AND published_at IS NULL
    AND NOT cdc_is_delete();

-- Optional, CockroachDB 24.1+: expire outbox rows a week after they were
-- written, without emitting the TTL deletes to changefeeds.
-- ALTER TABLE ratelimit_outbox SET (
--   ttl_expiration_expression = $$(created_at + INTERVAL '7 days')$$,
--   ttl_disable_changefeed_replication = true
-- );
