-- 0002_bounce_rollup: what the bounces report reads, maintained as bounce events are written.
--
-- Scanning raw events for a 30-day report over 10 million bounces takes seconds; the rollup
-- keeps one row per (grain, bucket, type, campaign, From domain, source IP, template), where
-- grain is 'hour', 'day', or 'day_all' (days with all campaigns folded together: the common
-- report reads these), with the amount,
-- first/last seen, a sample raw text, the recipient domains seen (interned ids, kept sorted
-- and distinct) and how many messages bounced with that text for the first time in that hour.

CREATE TABLE recipient_domains (
    id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain text NOT NULL UNIQUE
);

CREATE TABLE bounce_rollup (
    grain         text        NOT NULL CHECK (grain IN ('hour', 'day', 'day_all')),
    bucket        timestamptz NOT NULL,   -- the UTC hour or day
    type          text        NOT NULL CHECK (type IN ('soft_bounce', 'hard_bounce')),
    campaign      text        NOT NULL,   -- '' for none; '' on day_all rows (all campaigns)
    from_domain   text        NOT NULL,   -- '' for none
    source_ip     text        NOT NULL,   -- '' for none
    template_key  bytea       NOT NULL,   -- md5(template): templates can be long
    template      text        NOT NULL,
    category      text,
    sample        text,                   -- one raw reply with this template
    amount        bigint      NOT NULL,   -- bounce events (resends count)
    messages_by_domain bigint NOT NULL DEFAULT 0,  -- first bounce of (message, type, template)
    messages_by_ip     bigint NOT NULL DEFAULT 0,  -- first bounce of (message, type, template, IP)
    domain_ids    integer[]   NOT NULL DEFAULT '{}',
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    PRIMARY KEY (grain, bucket, type, campaign, from_domain, source_ip, template_key)
);
-- The report looks up the text of each row it keeps by its template key.
CREATE INDEX bounce_rollup_template ON bounce_rollup (template_key);

-- First bounce of a message with a template (source_ip '' = any IP, for From-domain grouping).
CREATE TABLE bounce_message_keys (
    message_id   bigint NOT NULL,
    type         text   NOT NULL,
    template_key bytea  NOT NULL,
    source_ip    text   NOT NULL,
    PRIMARY KEY (message_id, type, template_key, source_ip)
);
