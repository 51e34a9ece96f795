-- Every SQL statement the relay runs, one named block each; Store methods run
-- exactly one block. Placeholders are asyncpg's $1..$n.

-- accept_messages --
-- Store a batch of messages, their deliveries and accepted events in one statement (one commit).
-- Without an owner ($16 NULL) the deliveries are queued, due at $15. With one, they are born
-- leased to it for $17: it sends them at once, from memory (relay.commit). A row per delivery
-- comes back, with its message's id, queue id and time, and when leased all that
-- claim_due_deliveries returns for it, under the same names.
WITH m AS (
    INSERT INTO messages (queue_id, envelope_sender, from_domain, message_id, campaign, size,
                          body, client_address, session_id, smtputf8, received_at)
    SELECT *, $15::timestamptz FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                         $5::text[], $6::integer[], $7::bytea[], $8::text[], $9::text[],
                         $10::boolean[])
    RETURNING id, queue_id, received_at, campaign, from_domain, envelope_sender, smtputf8
), d AS (
    INSERT INTO deliveries (message_id, recipient, recipient_key, recipient_domain,
                            next_attempt_at, updated_at, state, lease_owner, lease_until,
                            lease_token, unrecorded_claims)
    SELECT m.id, r.recipient, r.recipient_key, r.recipient_domain, $15, $15,
           CASE WHEN $16::text IS NULL THEN 'queued' ELSE 'inflight' END,
           $16, now() + $17::interval,  -- the database's clock: see claim_due_deliveries
           CASE WHEN $16 IS NULL THEN NULL ELSE nextval('lease_tokens') END,
           CASE WHEN $16 IS NULL THEN 0 ELSE 1 END
    FROM unnest($11::text[], $12::text[], $13::text[], $14::text[]) WITH ORDINALITY
         AS r (queue_id, recipient, recipient_key, recipient_domain, n)
    JOIN m USING (queue_id)
    ORDER BY r.n  -- delivery ids in the order the client gave the recipients
    RETURNING id, message_id, recipient, recipient_key, recipient_domain, attempts,
              unrecorded_claims - 1 AS unrecorded_claims, first_failure_at, lease_token,
              last_source_ip, avoid_source_ip
), e AS (
    INSERT INTO events (type, occurred_at, message_id, queue_id, campaign, from_domain,
                        envelope_sender)
    SELECT 'accepted', received_at, id, queue_id, campaign, from_domain, envelope_sender FROM m
)
SELECT m.id AS message_id, m.queue_id, m.received_at, d.id, d.recipient, d.recipient_key,
       d.recipient_domain, d.attempts, d.unrecorded_claims, d.first_failure_at, d.lease_token,
       d.last_source_ip, d.avoid_source_ip, m.envelope_sender, m.from_domain, m.campaign,
       m.smtputf8, c.suppressed, c.allowlisted, c.probation
FROM m
LEFT JOIN d ON d.message_id = m.id
LEFT JOIN LATERAL (
    SELECT * FROM delivery_checks(d.recipient_key, m.envelope_sender) WHERE $16 IS NOT NULL
) c ON true;

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

-- remove_suppression --
-- An administrator removes an address: entry deleted, profile active again, audit row keeping
-- who, why and the entry removed. No row when the address was not suppressed.
WITH d AS (
    DELETE FROM suppressions WHERE address = $1
    RETURNING address, reason, source, created_at, event_id
), p AS (
    UPDATE profiles SET status = 'active', status_changed_at = now()
    WHERE address IN (SELECT address FROM d)
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $2, 'suppression.remove', d.address, $3,
           jsonb_build_object('removed_reason', d.reason, 'removed_source', d.source,
                              'suppressed_at', d.created_at, 'event_id', d.event_id)
    FROM d
)
SELECT address, reason, source, created_at FROM d;

-- import_suppressions --
-- Add many addresses (source import); ones already listed are left as they are. Audited once.
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
    SELECT $3, 'suppression.import', $4, 'import', jsonb_build_object('added', count(*))
    FROM ins
)
SELECT count(*) AS added FROM ins;

-- export_suppressions --
-- The whole list, by address (streamed).
SELECT address, reason, source, created_at FROM suppressions ORDER BY address;

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

-- autovacuum_setting --
-- Whether the server's autovacuum runs (the queue tables need it, see 0005).
SELECT current_setting('autovacuum') = 'on' AS autovacuum;

-- durability_settings --
-- fsync and synchronous_commit: both must be on for a 250 to mean "safe".
SELECT current_setting('fsync') AS fsync,
       current_setting('synchronous_commit') AS synchronous_commit;

-- claim_due_deliveries --
-- Lease up to $4 due deliveries to owner $1 at time $2 for $3: queued and due, or inflight with a
-- lease that ran out (its relay died). SKIP LOCKED lets any number of relays claim side by side.
-- Leases are set and judged by the database's clock, never a relay's: a relay whose clock ran
-- ahead would otherwise take over live deliveries and send them a second time. ($2, the
-- relay's clock, still says what is due: a schedule a skewed clock reads early or late costs
-- a retry's timing, not a duplicate.)
-- Each comes with its checks (delivery_checks, 0008): the suppression precedence for its
-- message's sending domain, and its address's probation (confirm_hard), if any.
WITH queued AS (
    SELECT id FROM deliveries
    WHERE state = 'queued' AND next_attempt_at <= $2
    ORDER BY next_attempt_at, message_id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), stale AS (
    SELECT id FROM deliveries
    WHERE state = 'inflight' AND lease_until < now()
    ORDER BY lease_until
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM stale UNION ALL SELECT id FROM queued LIMIT $4
), claimed AS (
    UPDATE deliveries d
    SET state = 'inflight', lease_owner = $1, lease_until = now() + $3::interval,
        lease_token = nextval('lease_tokens'), updated_at = $2,
        unrecorded_claims = d.unrecorded_claims + 1
    FROM due, messages m
    WHERE d.id = due.id AND m.id = d.message_id
    RETURNING d.id, d.message_id, d.recipient, d.recipient_key, d.recipient_domain, d.attempts,
              d.unrecorded_claims - 1 AS unrecorded_claims,
              d.first_failure_at, d.lease_token, d.last_source_ip, d.avoid_source_ip,
              m.queue_id, m.envelope_sender, m.from_domain, m.campaign, m.smtputf8,
              m.received_at
)
SELECT c.*, k.suppressed, k.allowlisted, k.probation
FROM claimed c
CROSS JOIN LATERAL delivery_checks(c.recipient_key, c.envelope_sender) k;

-- message_bodies --
-- The bodies of the given messages (NULL once released).
SELECT id, body FROM messages WHERE id = ANY($1::bigint[]);

-- apply_outcomes --
-- Finish or reschedule leased deliveries and record one event each; a row whose lease token no
-- longer matches (another relay took it over) is left alone: fencing.
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::boolean[], $8::boolean[], $9::integer[], $10::text[], $11::text[],
                         $12::text[], $13::text[], $14::text[], $15::boolean[], $16::text[],
                         $17::text[], $18::text[], $19::boolean[], $20::bigint[])
        AS o (delivery_id, lease_token, state, event, next_attempt_at, counts_attempt,
              non_delivery, code, enhanced, reply_text, template, category, rule, synthetic,
              source_ip, destination, avoid_source_ip, suppress, incident_id)
), u AS (
    UPDATE deliveries d
    SET state = o.state,
        attempts = d.attempts + CASE WHEN o.counts_attempt THEN 1 ELSE 0 END,
        next_attempt_at = coalesce(o.next_attempt_at, d.next_attempt_at),
        first_failure_at = CASE WHEN o.event IN ('soft_bounce', 'hard_bounce')
                                THEN coalesce(d.first_failure_at, $1) ELSE d.first_failure_at END,
        lease_until = NULL, lease_owner = NULL, lease_token = NULL, unrecorded_claims = 0,
        last_source_ip = coalesce(o.source_ip, d.last_source_ip),
        avoid_source_ip = o.avoid_source_ip,
        last_code = o.code, last_reply = o.reply_text, updated_at = $1
    FROM o
    WHERE d.id = o.delivery_id AND d.lease_token = o.lease_token AND d.state = 'inflight'
    RETURNING d.id, d.message_id, d.recipient_key, d.recipient_domain, d.attempts, d.state
), finished AS (
    SELECT id, message_id FROM u WHERE state NOT IN ('queued', 'inflight')
), released AS (
    -- The bodies of messages these outcomes leave with no open delivery. The deliveries this
    -- statement finishes still read as open here (one snapshot), hence "not finished".
    -- A message kept here (body_kept below) is looked at again after the commit: a sibling
    -- that a concurrent transaction finished still reads as open in this snapshot.
    UPDATE messages m SET body = NULL
    WHERE m.id IN (SELECT message_id FROM finished) AND m.body IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight')
                        AND d.id NOT IN (SELECT id FROM finished))
    RETURNING m.id
), e AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, synthetic, suppress, retry_at, incident_id)
    SELECT $1, o.event, u.message_id, u.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, o.source_ip, o.destination, u.recipient_key, u.recipient_domain,
           o.code, o.enhanced, o.reply_text, o.template, o.category, u.attempts, o.rule,
           o.synthetic, o.suppress, CASE WHEN o.state = 'queued' THEN o.next_attempt_at END,
           o.incident_id
    FROM u JOIN o ON o.delivery_id = u.id JOIN messages m ON m.id = u.message_id
    RETURNING id, delivery_id
), nd AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, synthetic)
    SELECT $1, 'non_delivery', u.message_id, u.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, o.source_ip, o.destination, u.recipient_key, u.recipient_domain,
           o.code, o.enhanced, o.reply_text, o.template, o.category, u.attempts, o.rule,
           o.synthetic
    FROM u JOIN o ON o.delivery_id = u.id JOIN messages m ON m.id = u.message_id
    WHERE o.non_delivery
)
SELECT u.id AS delivery_id, u.message_id, u.recipient_key, e.id AS event_id,
       u.state NOT IN ('queued', 'inflight')
           AND u.message_id NOT IN (SELECT id FROM released) AS body_kept
FROM u JOIN e ON e.delivery_id = u.id;

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

-- apply_dsn_results --
-- Results read from bounce messages, one per delivery named by a verified return path.
-- A bounce counts for a delivery that is not final yet or was delivered: a failed one finishes
-- it (finish_state: bounced or expired) unless a worker holds it (its own outcome wins); a
-- delayed one only records its event. A complaint counts for any delivery. Each (delivery,
-- action) counts once ever: its dsn_results key (0010) is taken here, so a repeated report
-- (the same delayed DSN five times, two copies at once) records nothing more; within one
-- batch the first result of a pair counts. The event carries the delivery's sending IP, and
-- the remote MTA as its destination.
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::boolean[], $6::integer[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::jsonb[], $14::text[]) WITH ORDINALITY
        AS o (delivery_id, event, finish_state, non_delivery, code, enhanced, reply_text,
              template, category, rule, destination, detail, action, ord)
), reported AS (
    SELECT DISTINCT ON (d.id, coalesce(o.action, o.event))
           d.id, d.message_id, d.recipient_key, d.recipient_domain, d.attempts,
           d.last_source_ip, d.state, coalesce(o.action, o.event) AS report_action, o.*
    FROM o JOIN deliveries d ON d.id = o.delivery_id
    WHERE o.event = 'complaint' OR d.state IN ('delivered', 'queued', 'inflight')
    ORDER BY d.id, coalesce(o.action, o.event), o.ord
), first_time AS (
    INSERT INTO dsn_results (delivery_id, action, recorded_at)
    SELECT id, report_action, $1 FROM reported
    ON CONFLICT DO NOTHING
    RETURNING delivery_id, action
), cur AS (
    SELECT reported.*
    FROM reported JOIN first_time
        ON first_time.delivery_id = reported.id AND first_time.action = reported.report_action
), u AS (
    UPDATE deliveries d
    SET state = cur.finish_state, last_code = cur.code, last_reply = cur.reply_text,
        updated_at = $1
    FROM cur
    WHERE d.id = cur.id AND cur.finish_state IS NOT NULL AND d.state IN ('delivered', 'queued')
    RETURNING d.id
), e AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, detail, source)
    SELECT $1, cur.event, cur.message_id, cur.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, cur.last_source_ip, cur.destination, cur.recipient_key,
           cur.recipient_domain, cur.code, cur.enhanced, cur.reply_text, cur.template,
           cur.category, cur.attempts, cur.rule, cur.detail, 'dsn'
    FROM cur JOIN messages m ON m.id = cur.message_id
    RETURNING id, delivery_id
), nd AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, detail, source)
    SELECT $1, 'non_delivery', cur.message_id, cur.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, cur.last_source_ip, cur.destination, cur.recipient_key,
           cur.recipient_domain, cur.code, cur.enhanced, cur.reply_text, cur.template,
           cur.category, cur.attempts, cur.rule, cur.detail, 'dsn'
    FROM cur JOIN messages m ON m.id = cur.message_id
    WHERE cur.non_delivery AND cur.id IN (SELECT id FROM u)
)
SELECT e.id AS event_id, cur.id AS delivery_id, cur.recipient_key, cur.message_id, cur.state
FROM e JOIN cur ON cur.id = e.delivery_id;

-- lock_dsn_unmatched_client --
-- Serialise the unmatched-bounce count and insert of one client address ($1) until commit:
-- two sessions of one client cannot both take the last place under its limit.
SELECT pg_advisory_xact_lock(hashtextextended('dsn_unmatched ' || $1, 0));

-- count_dsn_unmatched --
-- How many unusable bounce messages client $1 had kept since $2, counted up to $3 only.
SELECT count(*) FROM (
    SELECT 1 FROM events
    WHERE type = 'dsn_unmatched' AND detail ->> 'peer' = $1 AND occurred_at >= $2
    LIMIT $3
) AS recent;

-- record_dsn_unmatched --
-- A bounce message the relay read and could not use (no or forged token, nothing parsable,
-- malformed, a loop, over its parse budget): kept as one event per message, whatever the
-- number of its recipients ($3 the first, detail lists them), so an operator can see what was
-- dropped and why. Kept only while client $7 has had fewer than $9 since $8 (the caller holds
-- lock_dsn_unmatched_client); no row when it is over.
INSERT INTO events (occurred_at, type, envelope_sender, recipient, recipient_domain, reply_text,
                    detail, source)
SELECT $1, 'dsn_unmatched', $2, $3, $4, $5, $6::jsonb, 'dsn'
WHERE (SELECT count(*) FROM (
           SELECT 1 FROM events
           WHERE type = 'dsn_unmatched' AND detail ->> 'peer' = $7 AND occurred_at >= $8
           LIMIT $9
       ) AS recent) < $9
RETURNING id;

-- expire_dsn_unmatched --
-- Delete up to $2 unusable bounce messages kept from before $1 ([dsn] unmatched_retention).
DELETE FROM events e
USING (SELECT occurred_at, id FROM events
       WHERE type = 'dsn_unmatched' AND occurred_at < $1
       ORDER BY occurred_at LIMIT $2) AS old
WHERE e.occurred_at = old.occurred_at AND e.id = old.id;

-- release_bodies --
-- Drop the bodies of messages whose deliveries are all final. Run after the commit that
-- finished them, so it sees what concurrent transactions finished too.
UPDATE messages m SET body = NULL
WHERE m.id = ANY($1::bigint[]) AND m.body IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight'));

-- list_deliveries --
-- The queue, oldest first, optionally one state.
SELECT d.id, m.queue_id, d.recipient, d.state, d.attempts, d.next_attempt_at, d.last_code,
       d.last_reply, m.received_at
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE ($1::text IS NULL OR d.state = $1)
ORDER BY d.next_attempt_at, d.id
LIMIT $2;

-- delivery_by_id --
-- One delivery with its message's envelope.
SELECT d.id, m.queue_id, d.recipient, d.recipient_key, d.state, d.attempts, d.next_attempt_at,
       d.first_failure_at, d.lease_until, d.lease_owner, d.last_source_ip, d.last_code,
       d.last_reply, m.envelope_sender, m.from_domain, m.campaign, m.received_at
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.id = $1;

-- events_of_delivery --
-- Every event of one delivery, oldest first.
SELECT occurred_at, type, attempt, code, enhanced, category, rule, source_ip, destination,
       reply_text, synthetic
FROM events WHERE delivery_id = $1 ORDER BY occurred_at, id;

-- retry_delivery_now --
-- Make a queued delivery due now.
UPDATE deliveries SET next_attempt_at = $2, updated_at = $2
WHERE id = $1 AND state = 'queued'
RETURNING id;

-- purge_delivery --
-- Cancel a queued delivery by hand, with an audit row.
WITH c AS (
    UPDATE deliveries SET state = 'cancelled', updated_at = now()
    WHERE id = $1 AND state = 'queued'
    RETURNING id, message_id, recipient_key
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $2, 'queue.purge', c.recipient_key, $3, jsonb_build_object('delivery_id', c.id)
    FROM c
)
SELECT id, message_id FROM c;

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

-- roll_up_bounces --
-- Fold the bounce events just written (occurred_at $1, ids $2) into bounce_rollup.
WITH b AS (
    SELECT e.id, e.message_id, e.type, coalesce(e.campaign, '') AS campaign,
           coalesce(e.from_domain, '') AS from_domain, coalesce(e.source_ip, '') AS source_ip,
           coalesce(e.template, e.reply_text, '') AS template,
           decode(md5(coalesce(e.template, e.reply_text, '')), 'hex') AS template_key,
           e.category, e.reply_text, coalesce(e.recipient_domain, '') AS recipient_domain
    FROM events e
    WHERE e.occurred_at = $1 AND e.id = ANY($2::bigint[])
      AND e.type IN ('soft_bounce', 'hard_bounce')
), by_domain AS (
    INSERT INTO bounce_message_keys (message_id, type, template_key, source_ip)
    SELECT DISTINCT message_id, type, template_key, '' FROM b WHERE message_id IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
    RETURNING message_id, type, template_key
), by_ip AS (
    INSERT INTO bounce_message_keys (message_id, type, template_key, source_ip)
    SELECT DISTINCT message_id, type, template_key, source_ip FROM b
    WHERE message_id IS NOT NULL AND source_ip <> ''
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
    RETURNING message_id, type, template_key, source_ip
), firsts AS (
    -- a message counts once per key; credit the first row of b that carries it
    SELECT DISTINCT ON (b.message_id, b.type, b.template_key) b.id
    FROM b JOIN by_domain k USING (message_id, type, template_key)
    ORDER BY b.message_id, b.type, b.template_key, b.id
), firsts_ip AS (
    SELECT DISTINCT ON (b.message_id, b.type, b.template_key, b.source_ip) b.id
    FROM b JOIN by_ip k USING (message_id, type, template_key, source_ip)
    ORDER BY b.message_id, b.type, b.template_key, b.source_ip, b.id
), flagged AS (
    -- joins, not IN (subquery) per row: a batch of 10k events must stay linear
    SELECT b.*, f.id IS NOT NULL AS first_by_domain, fi.id IS NOT NULL AS first_by_ip
    FROM b LEFT JOIN firsts f ON f.id = b.id LEFT JOIN firsts_ip fi ON fi.id = b.id
), agg AS (
    -- per campaign, and (second grouping set) with all campaigns folded together
    SELECT b.type, coalesce(b.campaign, '') AS campaign, GROUPING(b.campaign) = 1 AS all_campaigns,
           b.from_domain, b.source_ip, b.template_key,
           min(b.template) AS template, min(b.category) AS category,
           min(b.reply_text) AS sample, count(*) AS amount,
           count(*) FILTER (WHERE b.first_by_domain) AS messages_by_domain,
           count(*) FILTER (WHERE b.first_by_ip) AS messages_by_ip,
           coalesce(array_agg(DISTINCT dom.id ORDER BY dom.id)
                    FILTER (WHERE dom.id IS NOT NULL), '{}') AS domain_ids
    FROM flagged b LEFT JOIN recipient_domains dom ON dom.domain = b.recipient_domain
    GROUP BY GROUPING SETS ((b.type, b.campaign, b.from_domain, b.source_ip, b.template_key),
                            (b.type, b.from_domain, b.source_ip, b.template_key))
), grains AS (
    SELECT 'hour' AS grain, date_trunc('hour', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           AS bucket, false AS all_campaigns
    UNION ALL
    SELECT 'day', date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', false
    UNION ALL
    SELECT 'day_all', date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           true
)
INSERT INTO bounce_rollup AS r
SELECT g.grain, g.bucket, a.type, a.campaign, a.from_domain, a.source_ip, a.template_key,
       a.template, a.category, a.sample, a.amount, a.messages_by_domain, a.messages_by_ip,
       a.domain_ids, $1, $1
FROM agg a JOIN grains g USING (all_campaigns)
-- one lock order for every writer: concurrent batches cannot deadlock on rollup rows
ORDER BY g.grain, g.bucket, a.type, a.campaign, a.from_domain, a.source_ip, a.template_key
ON CONFLICT (grain, bucket, type, campaign, from_domain, source_ip, template_key) DO UPDATE
SET amount = r.amount + EXCLUDED.amount,
    messages_by_domain = r.messages_by_domain + EXCLUDED.messages_by_domain,
    messages_by_ip = r.messages_by_ip + EXCLUDED.messages_by_ip,
    domain_ids = CASE WHEN EXCLUDED.domain_ids <@ r.domain_ids THEN r.domain_ids ELSE
                 (SELECT array_agg(DISTINCT x ORDER BY x)
                  FROM unnest(r.domain_ids || EXCLUDED.domain_ids) AS x) END,
    first_seen = least(r.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(r.last_seen, EXCLUDED.last_seen);

-- intern_recipient_domains --
-- Give the recipient domains of the bounce events just written (occurred_at $1, ids $2) ids.
INSERT INTO recipient_domains (domain)
SELECT DISTINCT coalesce(recipient_domain, '') FROM events
WHERE occurred_at = $1 AND id = ANY($2::bigint[]) AND type IN ('soft_bounce', 'hard_bounce')
ORDER BY 1
ON CONFLICT (domain) DO NOTHING;

-- bounce_report --
-- Report rows from the rollups: period [$1, $2) on whole hours, whole UTC days [$7, $8) of it
-- read per day, the edge hours per hour; types $3, campaigns $4 (NULL: all), grouping $5
-- ('from-domain' | 'ip'), at most $6 rows (NULL: all), largest amount first. Only narrow
-- columns are aggregated; the texts of the rows that survive are looked up at the end.
WITH r AS (
    SELECT type, campaign, from_domain, source_ip, template_key, amount, messages_by_domain,
           messages_by_ip, domain_ids, first_seen, last_seen
    FROM bounce_rollup
    WHERE grain = CASE WHEN $4::text[] IS NULL THEN 'day_all' ELSE 'day' END
      AND bucket >= $7 AND bucket < $8
    UNION ALL
    SELECT type, campaign, from_domain, source_ip, template_key, amount, messages_by_domain,
           messages_by_ip, domain_ids, first_seen, last_seen
    FROM bounce_rollup
    WHERE grain = 'hour'
      AND ((bucket >= $1 AND bucket < least($7, $2)) OR (bucket >= greatest($8, $1) AND bucket < $2))
), f AS (
    SELECT CASE WHEN $5 = 'ip' THEN source_ip ELSE from_domain END AS grp,
           CASE WHEN $5 = 'ip' THEN messages_by_ip ELSE messages_by_domain END AS messages,
           template_key, amount, domain_ids, first_seen, last_seen
    FROM r
    WHERE type = ANY($3::text[]) AND ($4::text[] IS NULL OR campaign = ANY($4::text[]))
), g AS (
    SELECT grp, template_key, sum(amount)::bigint AS amount, sum(messages)::bigint AS messages,
           min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM f GROUP BY grp, template_key
), dd AS (
    SELECT grp, template_key, count(*)::bigint AS recipient_domains
    FROM (SELECT DISTINCT grp, template_key, d FROM f, unnest(f.domain_ids) AS d) AS x
    GROUP BY grp, template_key
), ranked AS (
    SELECT g.*, coalesce(dd.recipient_domains, 0) AS recipient_domains
    FROM g LEFT JOIN dd USING (grp, template_key)
    ORDER BY g.amount DESC, g.grp, g.template_key
    LIMIT $6
)
SELECT ranked.grp, t.template, ranked.amount, ranked.messages, ranked.recipient_domains,
       t.category, ranked.first_seen, ranked.last_seen, t.sample
FROM ranked
CROSS JOIN LATERAL (
    SELECT template, category, sample FROM bounce_rollup
    WHERE template_key = ranked.template_key LIMIT 1
) AS t
ORDER BY ranked.amount DESC, ranked.grp, t.template;

-- release_leases --
-- Hand claimed deliveries back (shutdown): queued again, due as they were; fenced by token.
UPDATE deliveries d
SET state = 'queued', lease_until = NULL, lease_owner = NULL, lease_token = NULL, unrecorded_claims = 0
FROM unnest($1::bigint[], $2::bigint[]) AS l (id, token)
WHERE d.id = l.id AND d.lease_token = l.token AND d.state = 'inflight'
RETURNING d.id;

-- defer_leases --
-- Hand claimed deliveries back untried, due again at $3 (a destination slowed down, an address
-- on probation): no attempt counted, no event; fenced by token. Those held for a probation
-- ($5 true) whose probation has ended meanwhile are due now: end_probation made the held mail
-- due while these were still leased. The probation row is locked, so an end_probation running
-- now either waits for this (and then finds them queued) or has ended it (and they go now).
WITH held AS (
    SELECT p.address FROM probation p
    WHERE $5 AND p.address IN (SELECT recipient_key FROM deliveries WHERE id = ANY($1::bigint[]))
    FOR KEY SHARE
)
UPDATE deliveries d
SET state = 'queued', lease_until = NULL, lease_owner = NULL, lease_token = NULL, unrecorded_claims = 0,
    next_attempt_at = CASE WHEN $5::boolean AND d.recipient_key NOT IN (SELECT address FROM held)
                           THEN $4 ELSE l.due END,
    updated_at = $4
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS l (id, token, due)
WHERE d.id = l.id AND d.lease_token = l.token AND d.state = 'inflight'
RETURNING d.id;

-- queue_stats --
-- Open deliveries by state, and the receive time of the oldest queued one (for /metrics).
SELECT d.state, count(*) AS n, min(m.received_at) AS oldest
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.state IN ('queued', 'inflight')
GROUP BY d.state;

-- ping --
-- The database answers (for /readyz).
SELECT 1;

-- campaigns_in_period --
-- Campaigns with bounces in [$1, $2) (for the admin page's campaign list).
SELECT DISTINCT campaign FROM bounce_rollup
WHERE grain = 'day' AND bucket >= date_trunc('day', $1::timestamptz) AND bucket < $2
  AND campaign <> ''
ORDER BY campaign
LIMIT 500;

-- bounces_per_day --
-- Soft and hard bounce events per UTC day in [$1, $2), campaigns $3 (NULL: all).
SELECT bucket AS day, type, sum(amount)::bigint AS amount
FROM bounce_rollup
WHERE grain = CASE WHEN $3::text[] IS NULL THEN 'day_all' ELSE 'day' END
  AND bucket >= date_trunc('day', $1::timestamptz) AND bucket < $2
  AND ($3::text[] IS NULL OR campaign = ANY($3::text[]))
GROUP BY bucket, type
ORDER BY bucket, type;

-- suppressions_with_cause --
-- A page of the suppression list with the bounce text that caused each entry.
SELECT s.address, s.reason, s.source, s.created_at, e.reply_text AS cause
FROM suppressions s
LEFT JOIN events e ON e.id = s.event_id AND e.occurred_at = s.event_at
WHERE ($1::text IS NULL OR strpos(s.address, lower($1)) > 0)
ORDER BY s.created_at DESC, s.address
LIMIT $2 OFFSET $3;

-- deferral_reasons --
-- The most common last replies of queued deliveries.
SELECT left(coalesce(last_reply, '(not tried yet)'), 200) AS reply, count(*) AS n
FROM deliveries WHERE state = 'queued'
GROUP BY 1 ORDER BY n DESC LIMIT $1;

-- start_probation --
-- [policy] confirm_hard: first recipient-level hard bounces put addresses on probation until
-- $3 (the probe delivery $5 is tried again then); the profile says so. An address already on
-- probation keeps its first entry.
WITH ins AS (
    INSERT INTO probation (address, since, until, source_ip, delivery_id, event_id, reason)
    SELECT a, $1, u, ip, d, e, r
    FROM unnest($2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::bigint[],
                $7::text[]) AS x (a, u, ip, d, e, r)
    ON CONFLICT (address) DO NOTHING
    RETURNING address
)
INSERT INTO profiles (address, status, status_changed_at)
SELECT address, 'probation', $1 FROM ins
ON CONFLICT (address) DO UPDATE SET status = 'probation', status_changed_at = $1
WHERE profiles.status = 'active';

-- end_probation --
-- The probe deliveries $2 finished: their probation ends. Unless the address was suppressed
-- (a confirmed bounce) its profile is active again and the mail held for it is due now.
WITH d AS (
    DELETE FROM probation WHERE delivery_id = ANY($2::bigint[]) RETURNING address
), free AS (
    SELECT address FROM d WHERE NOT EXISTS (SELECT 1 FROM suppressions s
                                            WHERE s.address = d.address)
), p AS (
    UPDATE profiles SET status = 'active', status_changed_at = $1
    WHERE address IN (SELECT address FROM free) AND status = 'probation'
)
UPDATE deliveries SET next_attempt_at = $1, updated_at = $1
WHERE recipient_key IN (SELECT address FROM free) AND state = 'queued';
