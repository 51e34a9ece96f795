-- The queue (queue.py): messages accepted with their deliveries, deliveries claimed under a
-- lease, their outcomes applied (with confirm_hard probation), leases given back, bodies
-- released, and the administrators' view of deliveries. Placeholders are asyncpg's $1..$n.

-- accept_messages --
-- Store a batch of messages, their deliveries and accepted events in one statement (one commit).
-- Without an owner ($16 NULL) the deliveries are queued, due at $15. With one, they are born
-- leased to it for $17: it sends them at once, from memory (relay.commit). A row per delivery
-- comes back, with its message's id, queue id and time, and when leased all that
-- claim_due_deliveries returns for it, under the same names. $18: each recipient's
-- recipient_domain_flag ([recipients] "tag"), NULL for most.
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
                            lease_token, unrecorded_claims, recipient_domain_flag)
    SELECT m.id, r.recipient, r.recipient_key, r.recipient_domain, $15, $15,
           CASE WHEN $16::text IS NULL THEN 'queued' ELSE 'inflight' END,
           $16, now() + $17::interval,  -- the database's clock: see claim_due_deliveries
           CASE WHEN $16 IS NULL THEN NULL ELSE nextval('lease_tokens') END,
           CASE WHEN $16 IS NULL THEN 0 ELSE 1 END, r.flag
    FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $18::text[]) WITH ORDINALITY
         AS r (queue_id, recipient, recipient_key, recipient_domain, flag, n)
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
       d.last_source_ip, d.avoid_source_ip, NULL::integer AS last_code, NULL::text AS last_reply,
       m.envelope_sender, m.from_domain, m.campaign, m.smtputf8, c.suppressed, c.allowlisted,
       c.probation
FROM m
LEFT JOIN d ON d.message_id = m.id
LEFT JOIN LATERAL (
    SELECT * FROM delivery_checks(d.recipient_key, m.envelope_sender) WHERE $16 IS NOT NULL
) c ON true;

-- claim_due_deliveries --
-- Lease up to $4 due deliveries to owner $1 at time $2 for $3: queued and due, inflight with a
-- lease that ran out, or inflight and held by a relay presumed dead (relay_instances, 0018).
-- SKIP LOCKED lets any number of relays claim side by side.
-- Leases are set and judged by the database's clock, never a relay's: a relay whose clock ran
-- ahead would otherwise take over live deliveries and send them a second time. ($2, the
-- relay's clock, still says what is due: a schedule a skewed clock reads early or late costs
-- a retry's timing, not a duplicate.)
-- A registered relay is presumed dead once it has been silent for its silent_after, or at
-- once when it stopped (what it could not hand back). Two guards keep live relays' leases
-- where they are. The claimer takes over only while it beats itself (its last beat within
-- half its silent_after) and after beating without a gap for the silent one's silent_after:
-- a database outage silences every relay at once, and the live ones get that long to beat
-- again before anyone reads their silence as death. And a claimer presumed dead claims
-- nothing: its peers would take the work straight back. An owner with no row (a caller that
-- does not register, an older relay) keeps the lease alone.
-- Each comes with its checks (delivery_checks, 0008): the suppression precedence for its
-- message's sending domain, and its address's probation (confirm_hard), if any; with its
-- last reply (the verdict confirms a domain our resolver said was absent by a second look);
-- and, when it was taken over, from whom and why (the store logs it).
WITH me AS (
    SELECT heartbeat_at, beating_since, silent_after FROM relay_instances WHERE name = $1
), claimer_alive AS (
    SELECT NOT EXISTS (SELECT 1 FROM me WHERE heartbeat_at < now() - silent_after) AS yes
), dead AS (
    SELECT p.name FROM relay_instances p, me
    WHERE p.name <> $1
      AND me.heartbeat_at >= now() - me.silent_after / 2
      AND (p.stopped_at IS NOT NULL
           OR (p.heartbeat_at < now() - p.silent_after
               AND me.beating_since <= now() - p.silent_after))
), queued AS (
    SELECT id, NULL::text AS taken_from, NULL::text AS taken_because FROM deliveries
    WHERE state = 'queued' AND next_attempt_at <= $2 AND (SELECT yes FROM claimer_alive)
    ORDER BY next_attempt_at, message_id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), stale AS (
    SELECT id, lease_owner AS taken_from, 'lease_ran_out' AS taken_because FROM deliveries
    WHERE state = 'inflight' AND lease_until < now() AND (SELECT yes FROM claimer_alive)
    ORDER BY lease_until
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), orphaned AS (
    -- The EXISTS is evaluated once, before the scan: with nobody presumed dead (nearly
    -- always) the inflight deliveries are not read at all.
    SELECT id, lease_owner AS taken_from, 'owner_presumed_dead' AS taken_because
    FROM deliveries
    WHERE state = 'inflight' AND lease_until >= now()
      AND lease_owner IN (SELECT name FROM dead) AND EXISTS (SELECT 1 FROM dead)
    ORDER BY lease_until
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT * FROM stale UNION ALL SELECT * FROM orphaned UNION ALL SELECT * FROM queued LIMIT $4
), claimed AS (
    UPDATE deliveries d
    SET state = 'inflight', lease_owner = $1, lease_until = now() + $3::interval,
        lease_token = nextval('lease_tokens'), updated_at = $2,
        unrecorded_claims = d.unrecorded_claims + 1
    FROM due, messages m
    WHERE d.id = due.id AND m.id = d.message_id
    RETURNING d.id, d.message_id, d.recipient, d.recipient_key, d.recipient_domain, d.attempts,
              d.unrecorded_claims - 1 AS unrecorded_claims, d.unrecorded_sends,
              d.first_failure_at, d.lease_token, d.last_source_ip, d.avoid_source_ip,
              d.last_code, d.last_reply,
              m.queue_id, m.envelope_sender, m.from_domain, m.campaign, m.smtputf8,
              m.received_at, due.taken_from, due.taken_because
)
SELECT c.*, k.suppressed, k.allowlisted, k.probation
FROM claimed c
CROSS JOIN LATERAL delivery_checks(c.recipient_key, c.envelope_sender) k;

-- relay_heartbeat --
-- Relay instance $1 (host $3, pid $4) is alive, and to be presumed dead once silent for $2;
-- its first beat registers it. Its beats run without a gap while each comes within half $2
-- of the one before; a longer gap (it stalled, the database was away) starts them afresh,
-- and until they have run for a silent peer's silent_after it takes no leases over
-- (claim_due_deliveries). How long it had been silent before this beat (NULL: registered).
WITH before AS (
    SELECT heartbeat_at FROM relay_instances WHERE name = $1
)
INSERT INTO relay_instances AS i (name, host, pid, heartbeat_at, beating_since, silent_after)
VALUES ($1, $3, $4, now(), now(), $2)
ON CONFLICT (name) DO UPDATE
SET heartbeat_at = now(), silent_after = EXCLUDED.silent_after, stopped_at = NULL,
    beating_since = CASE WHEN i.heartbeat_at < now() - i.silent_after / 2 THEN now()
                         ELSE i.beating_since END
RETURNING (SELECT now() - heartbeat_at FROM before) AS silence;

-- retire_relay_instance --
-- Relay instance $1 stopped: a lease it still holds (one it could not hand back) is taken
-- over at a peer's next claim instead of after its silence or its lease.
UPDATE relay_instances SET stopped_at = now() WHERE name = $1;

-- prune_relay_instances --
-- Forget the relay instances silent for longer than $1 that no inflight delivery names any
-- more; their names. (A lease that still names one after this runs out as leases do.)
DELETE FROM relay_instances p
WHERE p.heartbeat_at < now() - $1::interval
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.state = 'inflight' AND d.lease_owner = p.name)
RETURNING p.name;

-- note_sends --
-- Leased deliveries $1 (tokens $2) are about to be sent after a claim that ended with nothing
-- recorded: one more unrecorded send each, until an outcome, a release or a deferral resets
-- it (relay.delivery.worker gives a delivery up past a bound). Fenced by token: one another
-- relay took over meanwhile is not returned, and not sent.
UPDATE deliveries d SET unrecorded_sends = d.unrecorded_sends + 1
FROM unnest($1::bigint[], $2::bigint[]) AS l (id, token)
WHERE d.id = l.id AND d.lease_token = l.token AND d.state = 'inflight'
RETURNING d.id;

-- message_bodies --
-- The bodies of the given messages (NULL once released).
SELECT id, body FROM messages WHERE id = ANY($1::bigint[]);

-- apply_outcomes --
-- Finish or reschedule leased deliveries and record one event each, and count the attempts
-- among them for the report; a row whose lease token no longer matches (another relay took it
-- over) is left alone: fencing.
WITH o AS (
    SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::boolean[], $8::boolean[], $9::integer[], $10::text[], $11::text[],
                         $12::text[], $13::text[], $14::text[], $15::boolean[], $16::text[],
                         $17::text[], $18::text[], $19::boolean[], $20::bigint[], $21::text[])
        AS o (delivery_id, lease_token, state, event, next_attempt_at, counts_attempt,
              non_delivery, code, enhanced, reply_text, template, category, rule, synthetic,
              source_ip, destination, avoid_source_ip, suppress, incident_id, provider)
), u AS (
    UPDATE deliveries d
    SET state = o.state,
        attempts = d.attempts + CASE WHEN o.counts_attempt THEN 1 ELSE 0 END,
        next_attempt_at = coalesce(o.next_attempt_at, d.next_attempt_at),
        first_failure_at = CASE WHEN o.event IN ('soft_bounce', 'hard_bounce')
                                THEN coalesce(d.first_failure_at, $1) ELSE d.first_failure_at END,
        lease_until = NULL, lease_owner = NULL, lease_token = NULL, unrecorded_claims = 0,
        unrecorded_sends = 0,
        last_source_ip = coalesce(o.source_ip, d.last_source_ip),
        avoid_source_ip = o.avoid_source_ip,
        last_code = o.code, last_reply = o.reply_text, updated_at = $1
    FROM o
    WHERE d.id = o.delivery_id AND d.lease_token = o.lease_token AND d.state = 'inflight'
    RETURNING d.id, d.message_id, d.recipient_key, d.recipient_domain, d.attempts, d.state,
              o.event, o.counts_attempt, o.source_ip, o.provider  -- for tried: no join with o
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
                        attempt, rule, synthetic, suppress, retry_at, incident_id, provider)
    SELECT $1, o.event, u.message_id, u.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, o.source_ip, o.destination, u.recipient_key, u.recipient_domain,
           o.code, o.enhanced, o.reply_text, o.template, o.category, u.attempts, o.rule,
           o.synthetic, o.suppress, CASE WHEN o.state = 'queued' THEN o.next_attempt_at END,
           o.incident_id, o.provider
    FROM u JOIN o ON o.delivery_id = u.id JOIN messages m ON m.id = u.message_id
    RETURNING id, delivery_id
), nd AS (
    INSERT INTO events (occurred_at, type, message_id, delivery_id, queue_id, campaign,
                        from_domain, envelope_sender, source_ip, destination, recipient,
                        recipient_domain, code, enhanced, reply_text, template, category,
                        attempt, rule, synthetic, provider)
    SELECT $1, 'non_delivery', u.message_id, u.id, m.queue_id, m.campaign, m.from_domain,
           m.envelope_sender, o.source_ip, o.destination, u.recipient_key, u.recipient_domain,
           o.code, o.enhanced, o.reply_text, o.template, o.category, u.attempts, o.rule,
           o.synthetic, o.provider
    FROM u JOIN o ON o.delivery_id = u.id JOIN messages m ON m.id = u.message_id
    WHERE o.non_delivery
), tried AS (
    -- The attempts among these outcomes, for the bounces report (attempt_rollup, 0014): a
    -- cancellation or a delivery given up untried was no attempt.
    SELECT coalesce(m.campaign, '') AS campaign, coalesce(m.from_domain, '') AS from_domain,
           coalesce(u.source_ip, '') AS source_ip, coalesce(u.provider, '') AS provider, u.event
    FROM u JOIN messages m ON m.id = u.message_id
    WHERE u.counts_attempt AND u.event IN ('delivered', 'soft_bounce', 'hard_bounce')
), tried_counts AS (
    -- per campaign, and (second grouping set) with all campaigns folded together
    SELECT campaign, GROUPING(campaign) = 1 AS all_campaigns, from_domain, source_ip, provider,
           count(*) AS attempts, count(*) FILTER (WHERE event = 'delivered') AS delivered
    FROM tried
    GROUP BY GROUPING SETS ((campaign, from_domain, source_ip, provider),
                            (from_domain, source_ip, provider))
), rolled AS (
    INSERT INTO attempt_rollup AS r
    SELECT g.grain, date_trunc(g.unit, $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           coalesce(t.campaign, ''), t.from_domain, t.source_ip, t.provider, t.attempts,
           t.delivered
    FROM tried_counts t
    JOIN (VALUES ('hour', 'hour', false), ('day', 'day', false), ('day_all', 'day', true))
        AS g (grain, unit, all_campaigns) USING (all_campaigns)
    -- one lock order for every writer (as bounce_rollup): concurrent batches cannot deadlock
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (grain, bucket, campaign, from_domain, source_ip, provider) DO UPDATE
    SET attempts = r.attempts + EXCLUDED.attempts, delivered = r.delivered + EXCLUDED.delivered
)
SELECT u.id AS delivery_id, u.message_id, u.recipient_key, e.id AS event_id,
       u.state NOT IN ('queued', 'inflight')
           AND u.message_id NOT IN (SELECT id FROM released) AS body_kept
FROM u JOIN e ON e.delivery_id = u.id;

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
-- (a confirmed bounce) its profile is active again; returns those addresses, whose held mail
-- release_held_mail makes due.
WITH d AS (
    DELETE FROM probation WHERE delivery_id = ANY($2::bigint[]) RETURNING address
), free AS (
    SELECT address FROM d WHERE NOT EXISTS (SELECT 1 FROM suppressions s
                                            WHERE s.address = d.address)
), p AS (
    UPDATE profiles SET status = 'active', status_changed_at = $1
    WHERE address IN (SELECT address FROM free) AND status = 'probation'
)
SELECT address FROM free;

-- release_held_mail --
-- The mail held for addresses $2 whose probation just ended is due now ($1). A statement of
-- its own, after end_probation: its snapshot is taken once that DELETE got the probation
-- rows, so it sees held deliveries a concurrent defer_leases handed back meanwhile (in one
-- statement with the DELETE, its older snapshot saw them still inflight and missed them).
UPDATE deliveries SET next_attempt_at = $1, updated_at = $1
WHERE recipient_key = ANY($2::text[]) AND state = 'queued' AND next_attempt_at > $1;

-- release_bodies --
-- Drop the bodies of messages whose deliveries are all final. Run after the commit that
-- finished them, so it sees what concurrent transactions finished too.
UPDATE messages m SET body = NULL
WHERE m.id = ANY($1::bigint[]) AND m.body IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.message_id = m.id AND d.state IN ('queued', 'inflight'));

-- release_leases --
-- Hand claimed deliveries back (shutdown): queued again, due as they were; fenced by token.
UPDATE deliveries d
SET state = 'queued', lease_until = NULL, lease_owner = NULL, lease_token = NULL, unrecorded_claims = 0,
    unrecorded_sends = 0
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
    unrecorded_sends = 0,
    next_attempt_at = CASE WHEN $5::boolean AND d.recipient_key NOT IN (SELECT address FROM held)
                           THEN $4 ELSE l.due END,
    updated_at = $4
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS l (id, token, due)
WHERE d.id = l.id AND d.lease_token = l.token AND d.state = 'inflight'
RETURNING d.id;

-- list_deliveries --
-- The queue, oldest first, optionally one state.
SELECT d.id, m.queue_id, d.recipient, d.state, d.attempts, d.next_attempt_at, d.last_code,
       d.last_reply, m.received_at
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE ($1::text IS NULL OR d.state = $1)
ORDER BY d.next_attempt_at, d.id
LIMIT $2;

-- delivery_by_id --
-- One delivery with its message's envelope, and whether its address is allowlisted.
SELECT d.id, m.queue_id, d.recipient, d.recipient_key, d.state, d.attempts, d.next_attempt_at,
       d.first_failure_at, d.lease_until, d.lease_owner, d.last_source_ip, d.last_code,
       d.last_reply, m.envelope_sender, m.from_domain, m.campaign, m.received_at,
       (SELECT c.allowlisted FROM suppression_check(ARRAY[d.recipient_key], ARRAY['']) c)
           AS allowlisted
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.id = $1;

-- events_of_delivery --
-- Every event of one delivery, oldest first.
SELECT occurred_at, type, attempt, code, enhanced, category, rule, source_ip, destination,
       reply_text, synthetic
FROM events WHERE delivery_id = $1 ORDER BY occurred_at, id;

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

-- bound_queue_reads --
-- The queue page's reads, for the rest of their read-only transaction: custom plans (see
-- queue_deliveries_older) and at most $1 milliseconds each, so a filter no index serves on a
-- big queue is given up (the page says so) instead of holding a connection.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
       set_config('statement_timeout', $1::integer::text, true);

-- queue_deliveries_older --
-- The queue page (relay/web/pages/queue.py): a page of the deliveries matching the filters,
-- newest first, older than delivery $6 (NULL: from the newest); at most $7. Every filter is
-- optional ($1 state, $2 recipient domain, $3 From domain, $4 campaign, $5 words in the last
-- reply; NULL: any), and the four statements that take them spell them alike. They run with
-- custom plans (QueueStore sets plan_cache_mode): a NULL filter folds away and a state picks
-- its index (deliveries_open_newest, 0016, for queued and inflight; the primary key else).
SELECT d.id, m.queue_id, m.message_id, d.recipient, d.recipient_key, m.envelope_sender,
       m.from_domain, m.campaign, d.state, d.attempts, d.next_attempt_at, d.last_code,
       d.last_reply, m.received_at
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE ($1::text IS NULL OR d.state = $1)
  AND ($2::text IS NULL OR d.recipient_domain = $2)
  AND ($3::text IS NULL OR m.from_domain = $3)
  AND ($4::text IS NULL OR m.campaign = $4)
  AND ($5::text IS NULL OR strpos(lower(d.last_reply), lower($5)) > 0)
  AND ($6::bigint IS NULL OR d.id < $6)
ORDER BY d.id DESC
LIMIT $7;

-- queue_deliveries_newer --
-- The page before: the deliveries matching the filters newer than delivery $6, the oldest of
-- them first (the caller turns them round); at most $7.
SELECT d.id, m.queue_id, m.message_id, d.recipient, d.recipient_key, m.envelope_sender,
       m.from_domain, m.campaign, d.state, d.attempts, d.next_attempt_at, d.last_code,
       d.last_reply, m.received_at
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE ($1::text IS NULL OR d.state = $1)
  AND ($2::text IS NULL OR d.recipient_domain = $2)
  AND ($3::text IS NULL OR m.from_domain = $3)
  AND ($4::text IS NULL OR m.campaign = $4)
  AND ($5::text IS NULL OR strpos(lower(d.last_reply), lower($5)) > 0)
  AND d.id > $6
ORDER BY d.id
LIMIT $7;

-- count_queue_deliveries --
-- How many deliveries match the filters, counted up to $6 (a bound on the work: the page
-- says "more than" beyond it).
SELECT count(*) FROM (
    SELECT 1
    FROM deliveries d JOIN messages m ON m.id = d.message_id
    WHERE ($1::text IS NULL OR d.state = $1)
      AND ($2::text IS NULL OR d.recipient_domain = $2)
      AND ($3::text IS NULL OR m.from_domain = $3)
      AND ($4::text IS NULL OR m.campaign = $4)
      AND ($5::text IS NULL OR strpos(lower(d.last_reply), lower($5)) > 0)
    LIMIT $6
) AS matching;

-- queued_ids_matching --
-- The queued deliveries (waiting or deferred) matching the filters, newest first, at most
-- $6: what "every queued delivery matching the filter" retries or purges.
SELECT d.id
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.state = 'queued'
  AND ($1::text IS NULL OR d.state = $1)
  AND ($2::text IS NULL OR d.recipient_domain = $2)
  AND ($3::text IS NULL OR m.from_domain = $3)
  AND ($4::text IS NULL OR m.campaign = $4)
  AND ($5::text IS NULL OR strpos(lower(d.last_reply), lower($5)) > 0)
ORDER BY d.id DESC
LIMIT $6;

-- queue_delivery --
-- One delivery as the queue page shows it (its history page), with what the RCPT check
-- found of its domain when it was accepted with a tag ([recipients] "tag", 0020).
SELECT d.id, m.queue_id, m.message_id, d.recipient, d.recipient_key, m.envelope_sender,
       m.from_domain, m.campaign, d.state, d.attempts, d.next_attempt_at, d.last_code,
       d.last_reply, m.received_at, d.recipient_domain_flag
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.id = $1;

-- audit_of_delivery --
-- The administrators' acts on delivery $1 (retries, purges), whose audit rows name its
-- address $2 (admin_audit_subject, 0016), newest first.
SELECT occurred_at, actor, action, subject, reason, detail FROM admin_audit
WHERE subject = $2 AND action LIKE 'queue.%' AND detail ->> 'delivery_id' = $1::bigint::text
ORDER BY occurred_at DESC, id DESC
LIMIT 100;

-- retry_deliveries --
-- Make the queued deliveries (waiting or deferred) among $1 due now ($2; one due earlier keeps
-- its place), one audit row each naming actor $3 with reason $4. Returns each of $1 that
-- exists with the state it was in and whether it was retried (a queued one that was not
-- changed meanwhile: a worker claimed it, another administrator purged it).
-- Rows are locked in id order, so two batches at once wait for each other, never deadlock.
WITH picked AS MATERIALIZED (
    SELECT id FROM deliveries
    WHERE id = ANY($1::bigint[]) AND state = 'queued'
    ORDER BY id
    FOR UPDATE
), r AS (
    UPDATE deliveries d SET next_attempt_at = least(d.next_attempt_at, $2), updated_at = $2
    FROM picked
    WHERE d.id = picked.id AND d.state = 'queued'
    RETURNING d.id, d.recipient_key
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $2, $3, 'queue.retry', r.recipient_key, $4, jsonb_build_object('delivery_id', r.id)
    FROM r
)
SELECT d.id, d.state, r.id IS NOT NULL AS done
FROM deliveries d LEFT JOIN r ON r.id = d.id
WHERE d.id = ANY($1::bigint[]);

-- purge_deliveries --
-- Cancel the queued deliveries (waiting or deferred) among $1 at $2, one audit row each
-- naming actor $3 with reason $4 (as purge_delivery). Returns each of $1 that exists with
-- the state it was in, whether it was cancelled, and its message (whose body may go).
WITH picked AS MATERIALIZED (
    SELECT id FROM deliveries
    WHERE id = ANY($1::bigint[]) AND state = 'queued'
    ORDER BY id
    FOR UPDATE
), c AS (
    UPDATE deliveries d SET state = 'cancelled', updated_at = $2
    FROM picked
    WHERE d.id = picked.id AND d.state = 'queued'
    RETURNING d.id, d.recipient_key
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $2, $3, 'queue.purge', c.recipient_key, $4, jsonb_build_object('delivery_id', c.id)
    FROM c
)
SELECT d.id, d.state, c.id IS NOT NULL AS done, d.message_id
FROM deliveries d LEFT JOIN c ON c.id = d.id
WHERE d.id = ANY($1::bigint[]);
