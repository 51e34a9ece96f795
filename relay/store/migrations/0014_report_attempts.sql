-- 0014_report_attempts: the bounces report counts delivery attempts and deliveries beside
-- the bounces, groups by mailbox provider, and its total counts each message once.
--
-- An event's provider (policies/providers.py: by the MX host that answered, else the
-- recipient domain) is decided once, when the event is written. Events and rollup rows
-- written before this migration have none (NULL, '' in the rollups): the report groups them
-- under an empty provider.
ALTER TABLE events ADD COLUMN provider text;

-- attempt_rollup is bounce_rollup's sibling for every outcome that was an attempt
-- (delivered, soft and hard bounces from SMTP), kept by apply_outcomes in the statement that
-- writes the events: per hour, per day, and per day with campaigns folded together
-- ('day_all', campaign ''), by the report's groupings. Periods before this migration have
-- no rows here: their attempts and deliveries are unknown and the report shows 0 (and no
-- bounce rate) for them.
CREATE TABLE attempt_rollup (
    grain       text        NOT NULL CHECK (grain IN ('hour', 'day', 'day_all')),
    bucket      timestamptz NOT NULL,   -- the UTC hour or day
    campaign    text        NOT NULL,   -- '' for none; '' on day_all rows (all campaigns)
    from_domain text        NOT NULL,   -- '' for none
    source_ip   text        NOT NULL,   -- '' when no connection was made (DNS, no route)
    provider    text        NOT NULL,   -- the recipient's mailbox provider
    attempts    bigint      NOT NULL,   -- outcomes that counted an attempt
    delivered   bigint      NOT NULL,   -- of which delivered
    PRIMARY KEY (grain, bucket, campaign, from_domain, source_ip, provider)
);

-- bounce_rollup is rebuilt: kept per provider too, with the total's message counts, and
-- partitioned by grain. A 30-day report reads a month of day rows; among the hour rows (as
-- many again) they were spread over the whole heap, and the report read most of its pages
-- for a tenth of its rows; each grain in a table of its own keeps them together. Rows from
-- before this migration keep their counts: provider '' (the report groups them under an
-- empty provider) and no overall message counts (NULL: the total counts their messages as
-- their rows did, once per text).
--
-- Grouped by provider, a row's messages are its messages by domain: a message's first
-- bounce with a text is credited to the row, and so to the provider, that carried it (a
-- message reaches one provider per recipient domain, and a text is mostly one provider's
-- own; a key per provider would cost the write path another index insert per bounce).
--
-- messages_overall(_any) count the total's distinct messages. A row's messages count a
-- message once per (text, group): summed over rows, a message that bounced with two texts or
-- from two IPs counted twice. These count it once over the whole report: its first bounce
-- of each type, and its first of any type (for --type all), credited to the row that
-- carries that bounce (bounced_messages).
ALTER TABLE bounce_rollup RENAME TO bounce_rollup_before_0014;
ALTER INDEX bounce_rollup_template RENAME TO bounce_rollup_before_0014_template;
CREATE TABLE bounce_rollup (
    grain         text        NOT NULL,   -- 'hour', 'day', 'day_all': the partitions
    bucket        timestamptz NOT NULL,   -- the UTC hour or day
    type          text        NOT NULL CHECK (type IN ('soft_bounce', 'hard_bounce')),
    campaign      text        NOT NULL,   -- '' for none; '' on day_all rows (all campaigns)
    from_domain   text        NOT NULL,   -- '' for none
    source_ip     text        NOT NULL,   -- '' for none
    provider      text        NOT NULL,   -- the recipient's mailbox provider; '' before 0014
    template_key  bytea       NOT NULL,   -- md5 of the codes and the template (0011)
    template      text        NOT NULL,
    category      text,
    sample        text,                   -- one raw reply with this template
    amount        bigint      NOT NULL,   -- bounce events (resends count)
    messages_by_domain   bigint NOT NULL DEFAULT 0,  -- first bounce of (message, type, template)
    messages_by_ip       bigint NOT NULL DEFAULT 0,  -- ... and IP
    messages_overall     bigint,          -- first bounce of (message, type)
    messages_overall_any bigint,          -- first bounce of the message
    domain_ids    integer[]   NOT NULL DEFAULT '{}',
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    code          text        NOT NULL DEFAULT '',
    PRIMARY KEY (grain, bucket, type, campaign, from_domain, source_ip, provider, template_key)
) PARTITION BY LIST (grain);
CREATE TABLE bounce_rollup_hour PARTITION OF bounce_rollup FOR VALUES IN ('hour');
CREATE TABLE bounce_rollup_day PARTITION OF bounce_rollup FOR VALUES IN ('day');
CREATE TABLE bounce_rollup_day_all PARTITION OF bounce_rollup FOR VALUES IN ('day_all');
INSERT INTO bounce_rollup (grain, bucket, type, campaign, from_domain, source_ip, provider,
                           template_key, template, category, sample, amount,
                           messages_by_domain, messages_by_ip, domain_ids, first_seen,
                           last_seen, code)
SELECT grain, bucket, type, campaign, from_domain, source_ip, '', template_key, template,
       category, sample, amount, messages_by_domain, messages_by_ip, domain_ids, first_seen,
       last_seen, code
FROM bounce_rollup_before_0014;
DROP TABLE bounce_rollup_before_0014;
-- The report looks up the text of each row it keeps by its template key (in day_all).
CREATE INDEX bounce_rollup_template ON bounce_rollup (template_key);
-- A report of some campaigns reads their day rows, not every campaign's.
CREATE INDEX bounce_rollup_day_campaign ON bounce_rollup_day (campaign, bucket);

-- The first bounce of a message of each type, and of any type ('any').
CREATE TABLE bounced_messages (
    message_id bigint NOT NULL,
    type       text   NOT NULL CHECK (type IN ('soft_bounce', 'hard_bounce', 'any')),
    PRIMARY KEY (message_id, type)
);
-- Messages that bounced before this migration have bounced already: a later bounce is not
-- their first. (Every bounced message has a key without IP, source_ip ''.)
INSERT INTO bounced_messages (message_id, type)
SELECT DISTINCT message_id, type FROM bounce_message_keys WHERE source_ip = ''
UNION
SELECT DISTINCT message_id, 'any' FROM bounce_message_keys WHERE source_ip = '';
