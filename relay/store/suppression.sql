-- Suppressions (suppression.py): the RCPT check, the list, what bounces and complaints
-- suppress, the allowlist, entries scoped to one sending domain, the evidence behind an
-- entry, the audit log, and what is known about one address. Precedence between entries
-- is suppression_check's (0006). Placeholders are asyncpg's $1..$n.

-- suppression_reasons --
-- Why each (address, sending domain) may not get mail (NULL where it may), in input order;
-- the precedence of entries, scopes and the allowlist is suppression_check's (0006).
SELECT reason FROM suppression_check($1::text[], $2::text[]) ORDER BY n;

-- record_rejected_suppressed --
-- An RCPT refused because the recipient is suppressed.
INSERT INTO events (type, envelope_sender, recipient, recipient_domain, code, enhanced,
                    reply_text, detail)
VALUES ('rejected_suppressed', $1, $2, $3, 550, '5.7.1', $4, $5::jsonb);

-- add_suppression --
-- Put an address on the suppression list (no-op when it is already there); true if added.
-- An actor ($7, not NULL) makes it an administrator's act, with an audit row.
WITH ins AS (
    INSERT INTO suppressions (address, reason, source, event_id, event_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (address) DO NOTHING
    RETURNING address
), p AS (
    INSERT INTO profiles (address, status, status_changed_at)
    SELECT $1, $6, now() FROM ins
    ON CONFLICT (address) DO UPDATE SET status = EXCLUDED.status, status_changed_at = now()
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason)
    SELECT $7, 'suppression.add', $1, $2 FROM ins WHERE $7::text IS NOT NULL
)
SELECT EXISTS (SELECT 1 FROM ins);

-- remove_suppressions --
-- Administrators remove addresses $1, in one statement (all or none): each entry deleted, its
-- profile active again, an audit row per address keeping who ($2), why ($3) and the entry
-- removed. A row per address that was suppressed; none for the others.
WITH d AS (
    DELETE FROM suppressions WHERE address = ANY($1::text[])
    RETURNING address, reason, source, created_at, event_id
), p AS (
    UPDATE profiles SET status = 'active', status_changed_at = now()
    WHERE address IN (SELECT address FROM d)
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $2, 'suppression.remove', d.address, $3,
           jsonb_build_object('removed_reason', d.reason, 'removed_source', d.source,
                              'suppressed_at', d.created_at, 'event_id', d.event_id)
    FROM d ORDER BY d.address
)
SELECT address, reason, source, created_at FROM d ORDER BY address;

-- import_suppressions --
-- Add many addresses (source import); ones already listed are left as they are. Audited once:
-- who ($3), the file ($4), why ($5) and how many were added.
WITH ins AS (
    INSERT INTO suppressions (address, reason, source)
    SELECT address, reason, 'import' FROM unnest($1::text[], $2::text[]) AS x (address, reason)
    ON CONFLICT (address) DO NOTHING
    RETURNING address
), p AS (
    INSERT INTO profiles (address, status, status_changed_at)
    SELECT address, 'suppressed', now() FROM ins
    ON CONFLICT (address) DO UPDATE SET status = 'suppressed', status_changed_at = now()
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $3, 'suppression.import', $4, $5, jsonb_build_object('added', count(*))
    FROM ins
)
SELECT count(*) AS added FROM ins;

-- export_suppressions --
-- The entries under suppression_page's filter ($1..$5; all NULL: the whole list), by
-- address, streamed.
SELECT address, reason, source, created_at
FROM suppressions s
WHERE ($1::text IS NULL OR strpos(s.address, lower($1)) > 0)
  AND ($2::text IS NULL OR s.source = $2)
  AND ($3::text IS NULL OR EXISTS (
          SELECT 1 FROM events e
          WHERE e.id = s.event_id AND e.occurred_at = s.event_at AND e.category = $3))
  AND ($4::timestamptz IS NULL OR s.created_at >= $4)
  AND ($5::timestamptz IS NULL OR s.created_at < $5)
ORDER BY address;

-- audit_log --
-- Administrators' acts, newest first.
SELECT occurred_at, actor, action, subject, reason, detail
FROM admin_audit ORDER BY occurred_at DESC, id DESC LIMIT $1;

-- list_suppressions --
-- The suppression list, newest first: address substring $1, reason or source $2, since $3,
-- page of $4 rows from $5. strpos, not LIKE: a '%' or '_' typed by an operator is literal.
SELECT address, reason, source, created_at, event_id
FROM suppressions
WHERE ($1::text IS NULL OR strpos(address, lower($1)) > 0)
  AND ($2::text IS NULL OR source = $2 OR strpos(lower(reason), lower($2)) > 0)
  AND ($3::timestamptz IS NULL OR created_at >= $3)
ORDER BY created_at DESC, address
LIMIT $4 OFFSET $5;

-- suppressions_with_cause --
-- A page of the suppression list with the bounce text that caused each entry.
SELECT s.address, s.reason, s.source, s.created_at, e.reply_text AS cause
FROM suppressions s
LEFT JOIN events e ON e.id = s.event_id AND e.occurred_at = s.event_at
WHERE ($1::text IS NULL OR strpos(s.address, lower($1)) > 0)
ORDER BY s.created_at DESC, s.address
LIMIT $2 OFFSET $3;

-- suppression_page --
-- A page of the list under a filter: address contains $1, source $2, category of the bounce
-- that caused the entry $3, added from $4 (inclusive) to $5 (exclusive); ordered by $6
-- ('address' or 'since'; $7: descending), the address breaking ties; $8 rows from $9. The
-- bounce text that caused each entry is a subquery in the select list: PostgreSQL evaluates
-- it after the sort and the limit, for the rows shown only (a join would reach into the
-- events of every entry first).
SELECT s.address, s.reason, s.source, s.created_at,
       (SELECT e.reply_text FROM events e
        WHERE e.id = s.event_id AND e.occurred_at = s.event_at) AS cause
FROM suppressions s
WHERE ($1::text IS NULL OR strpos(s.address, lower($1)) > 0)
  AND ($2::text IS NULL OR s.source = $2)
  AND ($3::text IS NULL OR EXISTS (
          SELECT 1 FROM events e
          WHERE e.id = s.event_id AND e.occurred_at = s.event_at AND e.category = $3))
  AND ($4::timestamptz IS NULL OR s.created_at >= $4)
  AND ($5::timestamptz IS NULL OR s.created_at < $5)
ORDER BY CASE WHEN $6::text = 'address' AND NOT $7::boolean THEN s.address END,
         CASE WHEN $6::text = 'address' AND $7::boolean THEN s.address END DESC,
         CASE WHEN $6::text = 'since' AND NOT $7::boolean THEN s.created_at END,
         CASE WHEN $6::text = 'since' AND $7::boolean THEN s.created_at END DESC,
         s.address
LIMIT $8 OFFSET $9;

-- count_suppressions --
-- How many entries suppression_page's filter ($1..$5) holds.
SELECT count(*)
FROM suppressions s
WHERE ($1::text IS NULL OR strpos(s.address, lower($1)) > 0)
  AND ($2::text IS NULL OR s.source = $2)
  AND ($3::text IS NULL OR EXISTS (
          SELECT 1 FROM events e
          WHERE e.id = s.event_id AND e.occurred_at = s.event_at AND e.category = $3))
  AND ($4::timestamptz IS NULL OR s.created_at >= $4)
  AND ($5::timestamptz IS NULL OR s.created_at < $5);

-- suppress_recipients --
-- Bounces and complaints that suppress: suppression entry (source $5; the first cause is kept),
-- profile status $6, and every other queued delivery to the address cancelled with a
-- suppressed event; the messages of those cancelled, whose bodies may be released after commit.
WITH s AS (
    -- An allowlisted address is never suppressed automatically; $7 false (dry_run) cancels
    -- nothing queued.
    SELECT s.* FROM unnest($2::text[], $3::text[], $4::bigint[]) AS s (address, reason, event_id)
    WHERE NOT (SELECT c.allowlisted FROM suppression_check(ARRAY[s.address], ARRAY['']) c)
), ins AS (
    INSERT INTO suppressions (address, reason, source, event_id, event_at, created_at)
    SELECT address, reason, $5, event_id, $1, $1 FROM s
    ON CONFLICT (address) DO NOTHING
    RETURNING address
), p AS (
    INSERT INTO profiles (address, status, status_changed_at)
    SELECT address, $6, $1 FROM s
    ON CONFLICT (address) DO UPDATE SET status = $6, status_changed_at = $1
    WHERE profiles.status <> $6
), c AS (
    UPDATE deliveries d
    SET state = 'cancelled', updated_at = $1
    FROM s
    WHERE d.recipient_key = s.address AND d.state = 'queued' AND $7
    RETURNING d.id, d.message_id, d.recipient_key, d.recipient_domain, d.attempts
), ce AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, recipient, recipient_domain, attempt,
                        detail)
    SELECT $1, 'suppressed', c.message_id, c.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, c.recipient_key, c.recipient_domain, c.attempts,
           jsonb_build_object('why', 'recipient suppressed while queued')
    FROM c JOIN messages m ON m.id = c.message_id
)
SELECT (SELECT count(*) FROM ins) AS added, (SELECT count(*) FROM c) AS cancelled,
       ARRAY(SELECT DISTINCT message_id FROM c) AS cancelled_messages;

-- allowlist --
SELECT entry, reason, actor, created_at FROM allowlist ORDER BY entry;

-- allowlist_add --
-- Allowlist an address key or domain $1 (audited); true if it was not listed.
WITH ins AS (
    INSERT INTO allowlist (entry, reason, actor) VALUES ($1, $2, $3)
    ON CONFLICT (entry) DO NOTHING
    RETURNING entry
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason)
    SELECT $3, 'allowlist.add', entry, $2 FROM ins
)
SELECT EXISTS (SELECT 1 FROM ins);

-- allowlist_remove --
WITH d AS (
    DELETE FROM allowlist WHERE entry = $1 RETURNING entry, reason
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $3, 'allowlist.remove', entry, $2, jsonb_build_object('removed_reason', d.reason)
    FROM d
)
SELECT EXISTS (SELECT 1 FROM d);

-- add_scoped_suppression --
-- An administrator suppresses address $1 for sending domain $2 only (audited).
WITH ins AS (
    INSERT INTO scoped_suppressions (address, sending_domain, reason, source)
    VALUES ($1, $2, $3, 'manual')
    ON CONFLICT (address, sending_domain) DO NOTHING
    RETURNING address
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $4, 'suppression.add', address, $3, jsonb_build_object('sending_domain', $2::text)
    FROM ins
)
SELECT EXISTS (SELECT 1 FROM ins);

-- remove_scoped_suppression --
WITH d AS (
    DELETE FROM scoped_suppressions WHERE address = $1 AND sending_domain = $2
    RETURNING address, sending_domain, reason, source, created_at
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $3, 'suppression.remove', address, $4,
           jsonb_build_object('sending_domain', sending_domain, 'removed_reason', reason,
                              'removed_source', source, 'suppressed_at', created_at)
    FROM d
)
SELECT EXISTS (SELECT 1 FROM d);

-- evidence_entries --
-- Every entry that applies to address $1: global, scoped, allowlist (address or domain),
-- probation.
SELECT 'global' AS kind, NULL::text AS scope, reason, source, created_at, event_id,
       NULL::timestamptz AS until
FROM suppressions WHERE address = $1
UNION ALL
SELECT 'scoped', sending_domain, reason, source, created_at, event_id, NULL
FROM scoped_suppressions WHERE address = $1
UNION ALL
SELECT 'allowlist', entry, reason, 'allowlist', created_at, NULL::bigint, NULL
FROM allowlist WHERE entry = $1 OR entry = substring($1 FROM '@([^@]*)$')
UNION ALL
SELECT 'probation', NULL, reason, 'confirm_hard', since, event_id, until
FROM probation WHERE address = $1;

-- evidence_bounces --
-- Every bounce and complaint recorded for address $1, newest first, with the incident each
-- belongs to (if any).
-- What deciding each again needs comes along (attempt, first failure, the report's action):
-- the profile page shows what today's rules decide.
SELECT e.id AS event_id, e.occurred_at, e.type, e.source, e.code, e.enhanced, e.reply_text,
       e.template, e.category, e.source_ip, e.destination, e.campaign, e.from_domain, e.rule,
       e.suppress, e.retry_at, e.queue_id, e.incident_id, i.state AS incident_state,
       e.delivery_id, e.recipient, e.recipient_domain, e.synthetic, e.attempt,
       e.detail ->> 'action' AS dsn_action, d.first_failure_at
FROM events e LEFT JOIN incidents i ON i.id = e.incident_id
LEFT JOIN deliveries d ON d.id = e.delivery_id
WHERE e.recipient = $1 AND e.type IN ('hard_bounce', 'soft_bounce', 'complaint', 'non_delivery')
ORDER BY e.occurred_at DESC, e.id DESC
LIMIT 200;

-- evidence_audit --
-- Administrators' (and incident detection's) acts on address $1.
SELECT occurred_at, actor, action, reason, detail FROM admin_audit
WHERE subject = $1 ORDER BY occurred_at DESC, id DESC LIMIT 100;

-- profile --
-- An address's profile row, with its suppression entry when there is one.
SELECT p.address, p.status, p.status_changed_at, s.reason AS suppression_reason,
       s.source AS suppression_source, s.created_at AS suppressed_at
FROM profiles p LEFT JOIN suppressions s ON s.address = p.address
WHERE p.address = $1;

-- bounces_of_address --
-- The bounce events of one address, newest first.
SELECT occurred_at, type, code, enhanced, category, reply_text, source_ip, destination,
       queue_id, campaign, attempt
FROM events
WHERE recipient = $1 AND type IN ('soft_bounce', 'hard_bounce', 'non_delivery')
ORDER BY occurred_at DESC, id DESC
LIMIT $2;

-- delivery_counts_of_address --
-- How many deliveries to one address ended in each state.
SELECT state, count(*) AS n FROM deliveries WHERE recipient_key = $1 GROUP BY state ORDER BY state;

-- deliveries_of_address --
-- The deliveries to address $1, newest first, at most $2, with their message's envelope
-- (deliveries_recipient, 0017, finds them without reading the whole table).
SELECT d.id, m.queue_id, d.state, d.recipient, m.envelope_sender, m.from_domain, m.campaign,
       m.received_at, d.attempts
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.recipient_key = $1
ORDER BY d.id DESC
LIMIT $2;

-- events_of_address_deliveries --
-- What happened to deliveries $2 of address $1 (attempts, bounce messages, cancellation):
-- the newest $4 events of each, oldest first, with how many it has in all. Found through
-- events_recipient, from $3 on (when the oldest of their messages was received: no event of
-- theirs is older).
SELECT delivery_id, occurred_at, type, attempt, code, enhanced, category, rule, source_ip,
       destination, reply_text, synthetic, total
FROM (
    SELECT e.*, row_number() OVER w AS newest,
           count(*) OVER (PARTITION BY e.delivery_id) AS total
    FROM events e
    WHERE e.recipient = $1 AND e.delivery_id = ANY($2::bigint[]) AND e.occurred_at >= $3
    WINDOW w AS (PARTITION BY e.delivery_id ORDER BY e.occurred_at DESC, e.id DESC)
) x
WHERE newest <= $4
ORDER BY delivery_id DESC, occurred_at, id;
