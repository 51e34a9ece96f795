-- Bounce messages (dsn.py): their results applied to the deliveries they name, and the
-- unusable ones kept as dsn_unmatched events within a per-client limit. Placeholders are
-- asyncpg's $1..$n.

-- apply_dsn_results --
-- Results read from bounce messages, one per delivery named by a verified return path.
-- A bounce counts for a delivery that is not final yet or was delivered: a failed one finishes
-- it (finish_state: bounced or expired) unless a worker holds it (its own outcome wins); a
-- delayed one only records its event. A complaint counts for any delivery. Each (delivery,
-- action) counts once ever: its dsn_results key (0010) is taken here, so a repeated report
-- (the same delayed DSN five times, two copies at once) records nothing more; within one
-- batch the first result of a pair counts. The event carries the delivery's sending IP, the
-- remote MTA as its destination and the recipient's provider ($16), and whether the verdict
-- suppressed (classify --replay reads it).
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::boolean[], $6::integer[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                         $12::text[], $13::jsonb[], $14::text[], $15::boolean[], $16::text[])
        WITH ORDINALITY
        AS o (delivery_id, event, finish_state, non_delivery, code, enhanced, reply_text,
              template, category, rule, destination, detail, action, suppress, provider, ord)
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
                        attempt, rule, detail, source, suppress, provider)
    SELECT $1, cur.event, cur.message_id, cur.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, cur.last_source_ip, cur.destination, cur.recipient_key,
           cur.recipient_domain, cur.code, cur.enhanced, cur.reply_text, cur.template,
           cur.category, cur.attempts, cur.rule, cur.detail, 'dsn', cur.suppress, cur.provider
    FROM cur JOIN messages m ON m.id = cur.message_id
    RETURNING id, delivery_id
), nd AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, detail, source, provider)
    SELECT $1, 'non_delivery', cur.message_id, cur.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, cur.last_source_ip, cur.destination, cur.recipient_key,
           cur.recipient_domain, cur.code, cur.enhanced, cur.reply_text, cur.template,
           cur.category, cur.attempts, cur.rule, cur.detail, 'dsn', cur.provider
    FROM cur JOIN messages m ON m.id = cur.message_id
    WHERE cur.non_delivery AND cur.id IN (SELECT id FROM u)
)
SELECT e.id AS event_id, cur.id AS delivery_id, cur.recipient_key, cur.message_id, cur.state
FROM e JOIN cur ON cur.id = e.delivery_id;

-- recipient_domains_of_deliveries --
-- The recipient domain of each delivery $1 (a bounce message's provider, when its
-- Remote-MTA names none).
SELECT id, recipient_domain FROM deliveries WHERE id = ANY($1::bigint[]);

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
