-- The webhook outbox (0007): subscriptions, claims and results of the sender. The rows
-- themselves are written by triggers, in the transactions of the events they report.

-- sync_webhook_subscriptions --
-- Make the subscriptions exactly the (webhook $1, event $2) pairs, in one statement. Rows still
-- waiting for a webhook no longer among them are given up: no sender would ever take them, and
-- every claim would walk them.
WITH wanted AS (
    SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) AS w (webhook, event)
), gone AS (
    DELETE FROM webhook_subscriptions s
    WHERE NOT EXISTS (SELECT 1 FROM wanted w WHERE w.webhook = s.webhook AND w.event = s.event)
    RETURNING 1
), added AS (
    INSERT INTO webhook_subscriptions (webhook, event)
    SELECT webhook, event FROM wanted ORDER BY webhook, event
    ON CONFLICT DO NOTHING
    RETURNING 1
), abandoned AS (
    UPDATE webhook_outbox
    SET given_up_at = now(), lease_until = NULL, last_error = 'webhook removed from the config'
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND webhook <> ALL($1::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM gone) AS changed,
       (SELECT count(*) FROM abandoned) AS abandoned;

-- claim_webhook_events --
-- Lease up to $4 due outbox rows of webhooks $3 at time $1 for $2: never tried or due
-- again, and not leased by a sender that may still be posting them. SKIP LOCKED lets several
-- relays claim side by side; new rows ('-infinity') come before retries. Leases are set and
-- judged by the database's clock (a relay whose clock ran ahead must not take over a row
-- another sender is posting), as deliveries' leases are (queue.sql).
WITH due AS (
    SELECT id FROM webhook_outbox
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= $1
      AND (lease_until IS NULL OR lease_until <= now()) AND webhook = ANY($3::text[])
    ORDER BY next_attempt_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox o SET lease_until = now() + $2::interval
FROM due WHERE o.id = due.id
RETURNING o.id, o.webhook, o.event, o.occurred_at, o.payload, o.created_at, o.attempts,
          o.lease_until;

-- mark_webhook_delivered --
-- The receiver answered 2xx for row $1 at $2. Not fenced by the lease: once a receiver has
-- it, it is delivered, whichever sender posted it.
UPDATE webhook_outbox
SET delivered_at = $2, attempts = attempts + 1, lease_until = NULL, last_error = NULL
WHERE id = $1 AND delivered_at IS NULL;

-- mark_webhook_failed --
-- Row $1 (claimed with lease $2) failed at $3 with error $4: due again at $5, or given up at
-- $3 when $5 is NULL. A sender whose lease ran out (another one may have the row now) changes
-- nothing; whether this one did.
UPDATE webhook_outbox
SET attempts = attempts + 1, last_error = $4, lease_until = NULL,
    next_attempt_at = coalesce($5::timestamptz, next_attempt_at),
    given_up_at = CASE WHEN $5::timestamptz IS NULL THEN $3::timestamptz END
WHERE id = $1 AND lease_until = $2 AND delivered_at IS NULL AND given_up_at IS NULL
RETURNING attempts;

-- webhook_outbox_counts --
-- Per webhook subscribed or with rows left: rows waiting (and the oldest one's creation) and
-- rows given up. A webhook gone from the config still shows while it has rows waiting.
WITH pending AS (
    SELECT webhook, count(*) AS pending, min(created_at) AS oldest_pending
    FROM webhook_outbox WHERE delivered_at IS NULL AND given_up_at IS NULL
    GROUP BY webhook
), given_up AS (
    SELECT webhook, count(*) AS given_up FROM webhook_outbox WHERE given_up_at IS NOT NULL
    GROUP BY webhook
), hooks AS (
    SELECT webhook FROM webhook_subscriptions
    UNION SELECT webhook FROM pending
    UNION SELECT webhook FROM given_up
)
SELECT webhook, coalesce(p.pending, 0) AS pending, p.oldest_pending,
       coalesce(g.given_up, 0) AS given_up
FROM hooks LEFT JOIN pending p USING (webhook) LEFT JOIN given_up g USING (webhook)
ORDER BY webhook;

-- purge_webhook_outbox --
-- Delete up to $2 rows delivered or given up before $1; how many went. A row finished before
-- $1 was written before it too, which the BRIN index on created_at finds cheaply.
WITH old AS (
    SELECT id FROM webhook_outbox
    WHERE created_at < $1 AND coalesce(delivered_at, given_up_at) < $1
    LIMIT $2
)
DELETE FROM webhook_outbox o USING old WHERE o.id = old.id;
