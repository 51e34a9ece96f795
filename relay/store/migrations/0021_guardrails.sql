-- Guardrails (policies/guardrails.py): one row per send (campaign × From domain × provider)
-- the relays have seen, with its state, which every relay's delivery worker honours at claim
-- time: 'canary' (a new send: its first canary_slice deliveries go, the rest wait until the
-- slice's rates are known), 'open' (everything goes) or 'paused' (nothing goes until an
-- administrator releases it). Nothing is bounced or suppressed because of a guardrail: held
-- deliveries are handed back untried and due again later.
CREATE TABLE guardrails (
    campaign      text        NOT NULL,
    from_domain   text        NOT NULL,   -- '' for none
    provider      text        NOT NULL,   -- policies.providers: the recipient's provider
    state         text        NOT NULL CHECK (state IN ('canary', 'open', 'paused')),
    since         timestamptz NOT NULL,   -- first seen: its counts start in this hour
    canary_slice  integer     NOT NULL DEFAULT 0,  -- deliveries the canary lets go
    canary_sent   integer     NOT NULL DEFAULT 0,  -- ... let go so far (reserved at claim)
    level         text        NOT NULL DEFAULT 'unknown',  -- the last judgement
    reason        text        NOT NULL DEFAULT '',
    -- What the send had done when it tripped: counts, rates, sample replies.
    evidence      jsonb,
    tripped_at    timestamptz,
    -- An administrator's release: the send goes on, judged on what it does from here (the
    -- counts at the release are its baseline, subtracted from what follows).
    released_at   timestamptz,
    released_by   text,
    baseline      jsonb,
    checked_at    timestamptz,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (campaign, from_domain, provider)
);
-- Every worker reloads the held sends each second: few rows, found by this index.
CREATE INDEX guardrails_holding ON guardrails (state) WHERE state <> 'open';

-- The send's counts (policies.guardrails.SendCounts) read the hour rollups of one campaign.
CREATE INDEX attempt_rollup_campaign ON attempt_rollup (campaign, bucket) WHERE grain = 'hour';
CREATE INDEX bounce_rollup_hour_campaign ON bounce_rollup_hour (campaign, bucket);

-- guardrail.tripped / guardrail.released: posted to the webhooks that subscribe, in the
-- transaction that changes the state (rare: row-level).
ALTER TABLE webhook_subscriptions DROP CONSTRAINT webhook_subscriptions_event_check;
ALTER TABLE webhook_subscriptions ADD CONSTRAINT webhook_subscriptions_event_check
    CHECK (event IN ('delivered', 'soft_bounce', 'hard_bounce', 'non_delivery', 'suppressed',
                     'unsuppressed', 'incident', 'guardrail.tripped', 'guardrail.released'));
CREATE FUNCTION webhook_enqueue_guardrail() RETURNS trigger LANGUAGE plpgsql SET TimeZone = 'UTC'
AS $$
DECLARE
    kind text := CASE WHEN NEW.state = 'paused' THEN 'guardrail.tripped'
                      ELSE 'guardrail.released' END;
BEGIN
    INSERT INTO webhook_outbox (webhook, event, occurred_at, payload)
    SELECT s.webhook, kind, NEW.updated_at,
           jsonb_build_object('campaign', NEW.campaign, 'from_domain', NEW.from_domain,
                              'provider', NEW.provider, 'state', NEW.state,
                              'reason', NEW.reason, 'evidence', NEW.evidence,
                              'tripped_at', NEW.tripped_at, 'released_at', NEW.released_at,
                              'released_by', NEW.released_by)
    FROM webhook_subscriptions s WHERE s.event = kind
    ORDER BY s.webhook;
    RETURN NULL;
END
$$;
-- Tripped: into 'paused'. Released: out of 'paused' (an administrator's release; a canary
-- that opens is routine, not an event).
CREATE TRIGGER guardrails_webhooks_insert AFTER INSERT ON guardrails
    FOR EACH ROW WHEN (NEW.state = 'paused')
    EXECUTE FUNCTION webhook_enqueue_guardrail();
CREATE TRIGGER guardrails_webhooks_state AFTER UPDATE OF state ON guardrails
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND (NEW.state = 'paused' OR OLD.state = 'paused'))
    EXECUTE FUNCTION webhook_enqueue_guardrail();
