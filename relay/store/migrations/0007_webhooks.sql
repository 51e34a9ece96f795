-- 0007_webhooks: events out to [[webhooks]] receivers, through a durable outbox.
--
-- Triggers write the outbox rows in the transaction that makes the event happen, so the
-- relay's own statements stay as they are and no event can be lost between a commit and an
-- enqueue. Only webhooks subscribed to an event get a row; the subscriptions are the config's
-- [[webhooks]] events, replaced as a whole when a relay starts.

CREATE TABLE webhook_subscriptions (
    webhook  text NOT NULL,                 -- [[webhooks]] name
    event    text NOT NULL CHECK (event IN ('delivered', 'soft_bounce', 'hard_bounce',
                                            'non_delivery', 'suppressed', 'unsuppressed',
                                            'incident')),
    PRIMARY KEY (webhook, event)
);

CREATE TABLE webhook_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook          text        NOT NULL,
    event            text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    payload          jsonb       NOT NULL,  -- the "data" of the posted JSON
    created_at       timestamptz NOT NULL DEFAULT now(),  -- max_age counts from here
    attempts         integer     NOT NULL DEFAULT 0,
    -- '-infinity': never tried, due at once whatever the sender's (injectable) clock says.
    next_attempt_at  timestamptz NOT NULL DEFAULT '-infinity',
    lease_until      timestamptz,           -- a sender is posting it until then
    last_error       text,
    delivered_at     timestamptz,
    given_up_at      timestamptz
);
-- The claim reads the due rows of this index only: it stays as small as the backlog.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX webhook_outbox_given_up ON webhook_outbox (webhook)
    WHERE given_up_at IS NOT NULL;
-- Finished rows are purged by age; rows are appended in created_at order, which BRIN keeps
-- for almost nothing per insert.
CREATE INDEX webhook_outbox_created ON webhook_outbox USING brin (created_at);
-- A queue like deliveries (0005): every row is claimed and finished, two updates each.
ALTER TABLE webhook_outbox SET (autovacuum_vacuum_scale_factor = 0.01,
                                autovacuum_vacuum_threshold = 1000,
                                autovacuum_vacuum_cost_delay = 0,
                                autovacuum_analyze_scale_factor = 0.02);

-- The functions run with TimeZone UTC so that the timestamps inside payloads read the same
-- whatever the writing session's time zone is.

-- events: one statement-level trigger with a transition table (allowed on a partitioned
-- table; it sees the rows of every partition). Accepted mail writes events too, so with no
-- subscription the cost is one probe of a tiny table per statement, not one call per row.
CREATE FUNCTION webhook_enqueue_events() RETURNS trigger LANGUAGE plpgsql SET TimeZone = 'UTC'
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions
                   WHERE event IN ('delivered', 'soft_bounce', 'hard_bounce', 'non_delivery'))
    THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_outbox (webhook, event, occurred_at, payload)
    SELECT s.webhook, n.type, n.occurred_at, to_jsonb(n) - 'message_id'  -- queue_id names it
    FROM new_events n JOIN webhook_subscriptions s ON s.event = n.type
    -- events has a 'suppressed' type of its own (a queued delivery cancelled); the webhook
    -- event of that name comes from the suppressions table.
    WHERE n.type IN ('delivered', 'soft_bounce', 'hard_bounce', 'non_delivery')
    ORDER BY n.id, s.webhook;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_webhooks AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_enqueue_events();

-- suppressions: an import adds thousands of rows in one statement, so statement-level too.
CREATE FUNCTION webhook_enqueue_suppressed() RETURNS trigger LANGUAGE plpgsql SET TimeZone = 'UTC'
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = 'suppressed') THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_outbox (webhook, event, occurred_at, payload)
    SELECT s.webhook, 'suppressed', n.created_at, to_jsonb(n)
    FROM new_suppressions n JOIN webhook_subscriptions s ON s.event = 'suppressed'
    ORDER BY n.address, s.webhook;
    RETURN NULL;
END
$$;
CREATE TRIGGER suppressions_webhooks_insert AFTER INSERT ON suppressions
    REFERENCING NEW TABLE AS new_suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_enqueue_suppressed();

CREATE FUNCTION webhook_enqueue_unsuppressed() RETURNS trigger LANGUAGE plpgsql
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE event = 'unsuppressed') THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_outbox (webhook, event, occurred_at, payload)
    SELECT s.webhook, 'unsuppressed', now(), to_jsonb(o)
    FROM old_suppressions o JOIN webhook_subscriptions s ON s.event = 'unsuppressed'
    ORDER BY o.address, s.webhook;
    RETURN NULL;
END
$$;
CREATE TRIGGER suppressions_webhooks_delete AFTER DELETE ON suppressions
    REFERENCING OLD TABLE AS old_suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_enqueue_unsuppressed();

-- incidents: rare, and a transition table cannot go with UPDATE OF a column: row-level.
CREATE FUNCTION webhook_enqueue_incident() RETURNS trigger LANGUAGE plpgsql SET TimeZone = 'UTC'
AS $$
BEGIN
    INSERT INTO webhook_outbox (webhook, event, occurred_at, payload)
    SELECT s.webhook, 'incident',
           CASE WHEN TG_OP = 'INSERT' THEN NEW.opened_at ELSE coalesce(NEW.closed_at, now()) END,
           to_jsonb(NEW)
    FROM webhook_subscriptions s WHERE s.event = 'incident'
    ORDER BY s.webhook;
    RETURN NULL;
END
$$;
CREATE TRIGGER incidents_webhooks_insert AFTER INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION webhook_enqueue_incident();
CREATE TRIGGER incidents_webhooks_state AFTER UPDATE OF state ON incidents
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION webhook_enqueue_incident();
