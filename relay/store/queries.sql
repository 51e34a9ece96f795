-- Every SQL statement the relay runs, one named block each; Store methods run
-- exactly one block. Placeholders are asyncpg's $1..$n.

-- accept_messages --
-- Store a batch of messages, their deliveries and accepted events in one statement (one commit).
WITH m AS (
    INSERT INTO messages (queue_id, envelope_sender, from_domain, message_id, campaign, size,
                          body, client_address, session_id, smtputf8)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::integer[], $7::bytea[], $8::text[], $9::text[], $10::boolean[])
    RETURNING id, queue_id, received_at, campaign, from_domain, envelope_sender
), d AS (
    INSERT INTO deliveries (message_id, recipient, recipient_key, recipient_domain)
    SELECT m.id, r.recipient, r.recipient_key, r.recipient_domain
    FROM unnest($11::text[], $12::text[], $13::text[], $14::text[])
         AS r (queue_id, recipient, recipient_key, recipient_domain)
    JOIN m USING (queue_id)
), e AS (
    INSERT INTO events (type, occurred_at, message_id, queue_id, campaign, from_domain,
                        envelope_sender)
    SELECT 'accepted', received_at, id, queue_id, campaign, from_domain, envelope_sender FROM m
)
SELECT id, queue_id, received_at FROM m;

-- suppression_reason --
-- The reason an address is on the global suppression list; no row when it is not.
SELECT reason FROM suppressions WHERE address = $1;

-- record_rejected_suppressed --
-- An RCPT refused because the recipient is suppressed.
INSERT INTO events (type, envelope_sender, recipient, recipient_domain, code, enhanced,
                    reply_text, detail)
VALUES ('rejected_suppressed', $1, $2, $3, 550, '5.7.1', $4, $5::jsonb);

-- add_suppression --
-- Put an address on the suppression list (no-op when it is already there); true if added.
WITH ins AS (
    INSERT INTO suppressions (address, reason, source, event_id, event_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (address) DO NOTHING
    RETURNING address
), p AS (
    INSERT INTO profiles (address, status, status_changed_at)
    SELECT $1, $6, now() FROM ins
    ON CONFLICT (address) DO UPDATE SET status = EXCLUDED.status, status_changed_at = now()
)
SELECT EXISTS (SELECT 1 FROM ins);

-- list_suppressions --
-- The suppression list, newest first, optionally filtered by a substring.
SELECT address, reason, source, created_at, event_id
FROM suppressions
WHERE ($1::text IS NULL OR address LIKE '%' || $1 || '%')
ORDER BY created_at DESC, address
LIMIT $2;

-- message_by_queue_id --
-- One stored message (body included) by its queue id.
SELECT id, queue_id, received_at, envelope_sender, from_domain, message_id, campaign, size, body,
       client_address, session_id, smtputf8
FROM messages WHERE queue_id = $1;

-- deliveries_of_message --
-- The deliveries of one message, in recipient order.
SELECT id, message_id, recipient, recipient_key, recipient_domain, state, attempts,
       next_attempt_at, lease_until, last_source_ip, last_code, last_reply, updated_at
FROM deliveries WHERE message_id = $1 ORDER BY id;

-- count_rows --
-- Row counts of the main tables (tests and `bounce-relay status`).
SELECT (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM deliveries) AS deliveries,
       (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM suppressions) AS suppressions;

-- durability_settings --
-- fsync and synchronous_commit: both must be on for a 250 to mean "safe".
SELECT current_setting('fsync') AS fsync,
       current_setting('synchronous_commit') AS synchronous_commit;
