-- The data lifecycle (lifecycle.py): events' time partitions listed, created ahead and
-- dropped; finished messages with their deliveries, old audit rows and stray events of the
-- default partition deleted in small batches. The DDL itself is in the retention_* functions
-- of 0019 (an identifier cannot be a parameter). Placeholders are asyncpg's $1..$n.

-- time_partitions --
-- The partitions of table $1, oldest first (MINVALUE first), the default last, each with its
-- size on disk (heap, indexes and TOAST).
SELECT c.relname AS name, b.lower, b.upper, b.is_default,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL retention_partition_bounds(c.oid) AS b
WHERE i.inhparent = $1::regclass
ORDER BY b.is_default, b.lower NULLS FIRST;

-- create_time_partition --
-- The partition of table $1 for [$2, $3), with the rows the default partition held in that
-- range moved into it: its name and how many moved.
SELECT partition, moved FROM retention_create_partition($1::regclass, $2, $3);

-- partition_size --
-- The rows of partition $1 (PostgreSQL's estimate once it has analyzed it, else counted) and
-- its size on disk.
SELECT retention_partition_rows($1::regclass) AS rows,
       pg_total_relation_size($1::regclass) AS bytes;

-- drop_time_partition --
-- Drop partition $1, refused unless all its rows are before $2.
SELECT retention_drop_partition($1::regclass, $2);

-- default_events --
-- What events_default holds from $1 on: it stays empty while partitions are created ahead; a
-- row here was written for a time no partition covered (a clock far off, or runs missed for
-- weeks).
SELECT count(*) AS rows, min(occurred_at) AS oldest, max(occurred_at) AS newest
FROM events_default
WHERE occurred_at >= $1;

-- expire_default_events --
-- Delete up to $2 events of the default partition from before $1, oldest first.
DELETE FROM events_default e
USING (SELECT occurred_at, id FROM events_default WHERE occurred_at < $1
       ORDER BY occurred_at LIMIT $2) AS old
WHERE e.occurred_at = old.occurred_at AND e.id = old.id;

-- delete_finished_messages --
-- Delete up to $3 messages received in [$2, $1) whose every delivery is final, oldest first,
-- with their deliveries (their DSN results go by cascade) and their bounce keys (a message
-- that is gone bounces no more). How many messages and deliveries went, and the newest
-- receive time among them: the next batch starts there, so it does not walk the index
-- entries this one left dead. A message still open (queued or inflight) is left for later.
WITH old AS (
    SELECT m.id, m.received_at FROM messages m
    WHERE m.received_at >= $2 AND m.received_at < $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight'))
    ORDER BY m.received_at
    LIMIT $3
), d AS (
    DELETE FROM deliveries WHERE message_id IN (SELECT id FROM old) RETURNING 1
), k AS (
    DELETE FROM bounce_message_keys WHERE message_id IN (SELECT id FROM old)
), b AS (
    DELETE FROM bounced_messages WHERE message_id IN (SELECT id FROM old)
), m AS (
    DELETE FROM messages WHERE id IN (SELECT id FROM old) RETURNING 1
)
SELECT (SELECT count(*) FROM m) AS messages, (SELECT count(*) FROM d) AS deliveries,
       (SELECT max(received_at) FROM old) AS newest;

-- delete_old_audit --
-- Delete up to $2 audit rows from before $1 ([retention] admin_audit), oldest first.
DELETE FROM admin_audit
WHERE id IN (SELECT id FROM admin_audit WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2);

-- lifecycle_backlog --
-- What a run would delete row by row (the dry run's numbers): finished messages received
-- before $1 and their deliveries, webhook outbox rows finished before $2, unmatched bounces
-- before $3, audit rows before $4 (NULL: the audit log is kept) and default-partition events
-- before $5.
WITH old AS (
    SELECT m.id FROM messages m
    WHERE m.received_at < $1
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight'))
)
SELECT (SELECT count(*) FROM old) AS messages,
       (SELECT count(*) FROM deliveries WHERE message_id IN (SELECT id FROM old)) AS deliveries,
       (SELECT count(*) FROM webhook_outbox
        WHERE created_at < $2 AND coalesce(delivered_at, given_up_at) < $2) AS webhook_outbox,
       (SELECT count(*) FROM events
        WHERE type = 'dsn_unmatched' AND occurred_at < $3) AS unmatched_bounces,
       (SELECT count(*) FROM admin_audit WHERE occurred_at < $4) AS admin_audit,
       (SELECT count(*) FROM events_default WHERE occurred_at < $5) AS events_default;
