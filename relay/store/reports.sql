-- Reports (reports.py): the bounce rollup and the bounces report read from it, statistics
-- for /metrics and the admin pages, and the recorded bounces that `classify --replay` judges
-- again by another rule set. Placeholders are asyncpg's $1..$n.

-- roll_up_bounces --
-- Fold the bounce events just written (occurred_at $1, ids $2) into bounce_rollup, each
-- message counted at its first bounce per text (bounce_message_keys: any IP, and per IP) and
-- over all (bounced_messages: the total's).
WITH b AS (
    SELECT e.id, e.message_id, e.type, coalesce(e.campaign, '') AS campaign,
           coalesce(e.from_domain, '') AS from_domain, coalesce(e.source_ip, '') AS source_ip,
           coalesce(e.provider, '') AS provider, coalesce(e.template, e.reply_text, '') AS template,
           concat_ws(' ', e.code::text, e.enhanced) AS code,
           -- the template, and the codes in front when there are any (rows rolled up before
           -- 0011 have no code, and their key stays md5(template))
           decode(md5(CASE WHEN e.code IS NULL AND e.enhanced IS NULL
                           THEN coalesce(e.template, e.reply_text, '')
                           ELSE concat_ws(' ', e.code::text, e.enhanced) || E'\n'
                                || coalesce(e.template, e.reply_text, '') END), 'hex')
               AS template_key,
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
), overall AS (
    -- the message's first bounce of this type, and of any type: the total's messages
    INSERT INTO bounced_messages (message_id, type)
    SELECT message_id, type FROM b WHERE message_id IS NOT NULL
    UNION
    SELECT message_id, 'any' FROM b WHERE message_id IS NOT NULL
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING message_id, type
), firsts AS (
    -- a message counts once per key; credit the first row of b that carries it
    SELECT DISTINCT ON (b.message_id, b.type, b.template_key) b.id
    FROM b JOIN by_domain k USING (message_id, type, template_key)
    ORDER BY b.message_id, b.type, b.template_key, b.id
), firsts_ip AS (
    SELECT DISTINCT ON (b.message_id, b.type, b.template_key, b.source_ip) b.id
    FROM b JOIN by_ip k USING (message_id, type, template_key, source_ip)
    ORDER BY b.message_id, b.type, b.template_key, b.source_ip, b.id
), firsts_overall AS (
    SELECT DISTINCT ON (b.message_id, k.type) b.id, k.type = 'any' AS of_any_type
    FROM b JOIN overall k ON k.message_id = b.message_id AND k.type IN (b.type, 'any')
    ORDER BY b.message_id, k.type, b.id
), flagged AS (
    -- joins, not IN (subquery) per row: a batch of 10k events must stay linear
    SELECT b.*, f.id IS NOT NULL AS first_by_domain, fi.id IS NOT NULL AS first_by_ip,
           fo.id IS NOT NULL AS first_overall, fa.id IS NOT NULL AS first_overall_any
    FROM b LEFT JOIN firsts f ON f.id = b.id LEFT JOIN firsts_ip fi ON fi.id = b.id
    LEFT JOIN firsts_overall fo ON fo.id = b.id AND NOT fo.of_any_type
    LEFT JOIN firsts_overall fa ON fa.id = b.id AND fa.of_any_type
), agg AS (
    -- per campaign, and (second grouping set) with all campaigns folded together
    SELECT b.type, coalesce(b.campaign, '') AS campaign, GROUPING(b.campaign) = 1 AS all_campaigns,
           b.from_domain, b.source_ip, b.provider, b.template_key,
           min(b.template) AS template, min(b.code) AS code, min(b.category) AS category,
           min(b.reply_text) AS sample, count(*) AS amount,
           count(*) FILTER (WHERE b.first_by_domain) AS messages_by_domain,
           count(*) FILTER (WHERE b.first_by_ip) AS messages_by_ip,
           count(*) FILTER (WHERE b.first_overall) AS messages_overall,
           count(*) FILTER (WHERE b.first_overall_any) AS messages_overall_any,
           coalesce(array_agg(DISTINCT dom.id ORDER BY dom.id)
                    FILTER (WHERE dom.id IS NOT NULL), '{}') AS domain_ids
    FROM flagged b LEFT JOIN recipient_domains dom ON dom.domain = b.recipient_domain
    GROUP BY GROUPING SETS (
        (b.type, b.campaign, b.from_domain, b.source_ip, b.provider, b.template_key),
        (b.type, b.from_domain, b.source_ip, b.provider, b.template_key))
), grains AS (
    SELECT 'hour' AS grain, date_trunc('hour', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           AS bucket, false AS all_campaigns
    UNION ALL
    SELECT 'day', date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', false
    UNION ALL
    SELECT 'day_all', date_trunc('day', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           true
)
INSERT INTO bounce_rollup AS r (grain, bucket, type, campaign, from_domain, source_ip,
                            template_key, template, category, sample, amount,
                            messages_by_domain, messages_by_ip, domain_ids, first_seen,
                            last_seen, code, messages_overall, messages_overall_any, provider)
SELECT g.grain, g.bucket, a.type, a.campaign, a.from_domain, a.source_ip, a.template_key,
       a.template, a.category, a.sample, a.amount, a.messages_by_domain, a.messages_by_ip,
       a.domain_ids, $1, $1, a.code, a.messages_overall, a.messages_overall_any, a.provider
FROM agg a JOIN grains g USING (all_campaigns)
-- one lock order for every writer: concurrent batches cannot deadlock on rollup rows
ORDER BY g.grain, g.bucket, a.type, a.campaign, a.from_domain, a.source_ip, a.provider,
         a.template_key
ON CONFLICT (grain, bucket, type, campaign, from_domain, source_ip, provider, template_key)
DO UPDATE
SET amount = r.amount + EXCLUDED.amount,
    messages_by_domain = r.messages_by_domain + EXCLUDED.messages_by_domain,
    messages_by_ip = r.messages_by_ip + EXCLUDED.messages_by_ip,
    -- a row from before 0014 (NULL) keeps what it counted then, as bounce_report_totals reads it
    messages_overall = coalesce(r.messages_overall, r.messages_by_domain)
                       + EXCLUDED.messages_overall,
    messages_overall_any = coalesce(r.messages_overall_any, r.messages_by_domain)
                           + EXCLUDED.messages_overall_any,
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
-- ('from-domain' | 'ip' | 'provider'), at most $6 rows (NULL: all), largest amount first.
-- Each row carries its group's attempts and deliveries (attempt_rollup), the same on every
-- row of the group. First comes the total line (is_total), over all the filter selects
-- whatever the grouping and row limit, from the rows read for the report (one scan, one
-- snapshot): bounce events; distinct messages, each once (its first bounce of the types
-- asked; rows rolled up before 0014 count as their rows did, once per text); the attempts
-- and deliveries of every group; the first and last bounce. Only narrow columns are
-- aggregated; the texts of the rows that survive are looked up at the end. Each row names its
-- template key (hex), which report_row_events takes to list the events behind it.
WITH r AS (
    SELECT type, campaign, from_domain, source_ip, provider, template_key, amount,
           messages_by_domain, messages_by_ip, messages_overall, messages_overall_any,
           domain_ids, first_seen, last_seen
    FROM bounce_rollup
    WHERE grain = CASE WHEN $4::text[] IS NULL THEN 'day_all' ELSE 'day' END
      AND bucket >= $7 AND bucket < $8
    UNION ALL
    SELECT type, campaign, from_domain, source_ip, provider, template_key, amount,
           messages_by_domain, messages_by_ip, messages_overall, messages_overall_any,
           domain_ids, first_seen, last_seen
    FROM bounce_rollup
    WHERE grain = 'hour'
      AND ((bucket >= $1 AND bucket < least($7, $2)) OR (bucket >= greatest($8, $1) AND bucket < $2))
), f AS (
    SELECT CASE $5 WHEN 'ip' THEN source_ip WHEN 'provider' THEN provider ELSE from_domain END
               AS grp,
           -- by provider: a message's first bounce with the text, in the row that carried it
           CASE WHEN $5 = 'ip' THEN messages_by_ip ELSE messages_by_domain END AS messages,
           CASE WHEN 'soft_bounce' = ANY($3::text[]) AND 'hard_bounce' = ANY($3::text[])
                THEN coalesce(messages_overall_any, messages_by_domain)
                ELSE coalesce(messages_overall, messages_by_domain) END AS messages_once,
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
), ar AS (
    SELECT campaign, from_domain, source_ip, provider, attempts, delivered
    FROM attempt_rollup
    WHERE grain = CASE WHEN $4::text[] IS NULL THEN 'day_all' ELSE 'day' END
      AND bucket >= $7 AND bucket < $8
    UNION ALL
    SELECT campaign, from_domain, source_ip, provider, attempts, delivered
    FROM attempt_rollup
    WHERE grain = 'hour'
      AND ((bucket >= $1 AND bucket < least($7, $2)) OR (bucket >= greatest($8, $1) AND bucket < $2))
), tried AS (
    SELECT CASE $5 WHEN 'ip' THEN source_ip WHEN 'provider' THEN provider ELSE from_domain END
               AS grp,
           sum(attempts)::bigint AS attempts, sum(delivered)::bigint AS delivered
    FROM ar
    WHERE $4::text[] IS NULL OR campaign = ANY($4::text[])
    GROUP BY 1
)
SELECT * FROM (
    SELECT true AS is_total, NULL::text AS grp, NULL::text AS template, NULL::text AS code,
           coalesce(sum(f.amount), 0)::bigint AS amount,
           coalesce(sum(f.messages_once), 0)::bigint AS messages,
           NULL::bigint AS recipient_domains, NULL::text AS category,
           min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen, NULL::text AS sample,
           (SELECT coalesce(sum(attempts), 0) FROM tried)::bigint AS attempts,
           (SELECT coalesce(sum(delivered), 0) FROM tried)::bigint AS delivered,
           NULL::text AS template_key
    FROM f
    UNION ALL
    SELECT false, ranked.grp, t.template, t.code, ranked.amount, ranked.messages,
           ranked.recipient_domains, t.category, ranked.first_seen, ranked.last_seen, t.sample,
           coalesce(tried.attempts, 0), coalesce(tried.delivered, 0),
           -- the row's identity, for the events behind it (report_row_events)
           encode(ranked.template_key, 'hex')
    FROM ranked
    LEFT JOIN tried USING (grp)
    CROSS JOIN LATERAL (
        -- Every bounce is rolled up into all three grains, so the smallest partition has
        -- every text. (On the partitioned parent the planner builds a bitmap of all the
        -- text's rows for each lookup; on one partition its index stops at the first.)
        SELECT template, code, category, sample FROM bounce_rollup_day_all
        WHERE template_key = ranked.template_key LIMIT 1
    ) AS t
) AS report
ORDER BY is_total DESC, amount DESC, grp, template;

-- bounce_series --
-- The report as a time series: bounces of types $3 and attempts per UTC $9 ('hour' | 'day')
-- and group (grouping $5), campaigns $4 (NULL: all), period [$1, $2); by day, whole days
-- [$7, $8) are read per day and the edge hours fold into their (partial) days; at most the
-- $6 groups with the most bounces (NULL: all), every bucket of theirs; by time, then group.
-- First comes bounce_report's total line (is_total), from the same rows.
WITH br AS (
    SELECT bucket, type, campaign, from_domain, source_ip, provider, amount,
           messages_by_domain, messages_overall, messages_overall_any, first_seen, last_seen
    FROM bounce_rollup
    WHERE $9 = 'day' AND grain = CASE WHEN $4::text[] IS NULL THEN 'day_all' ELSE 'day' END
      AND bucket >= $7 AND bucket < $8
    UNION ALL
    SELECT bucket, type, campaign, from_domain, source_ip, provider, amount,
           messages_by_domain, messages_overall, messages_overall_any, first_seen, last_seen
    FROM bounce_rollup
    WHERE grain = 'hour' AND bucket >= $1 AND bucket < $2
      AND ($9 = 'hour' OR bucket < $7 OR bucket >= $8)
), f AS (
    SELECT date_trunc($9, bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS at,
           CASE $5 WHEN 'ip' THEN source_ip WHEN 'provider' THEN provider ELSE from_domain END
               AS grp,
           CASE WHEN 'soft_bounce' = ANY($3::text[]) AND 'hard_bounce' = ANY($3::text[])
                THEN coalesce(messages_overall_any, messages_by_domain)
                ELSE coalesce(messages_overall, messages_by_domain) END AS messages_once,
           amount, first_seen, last_seen
    FROM br
    WHERE type = ANY($3::text[]) AND ($4::text[] IS NULL OR campaign = ANY($4::text[]))
), bounced AS (
    SELECT at, grp, sum(amount)::bigint AS amount FROM f GROUP BY at, grp
), ar AS (
    SELECT bucket, campaign, from_domain, source_ip, provider, attempts, delivered
    FROM attempt_rollup
    WHERE $9 = 'day' AND grain = CASE WHEN $4::text[] IS NULL THEN 'day_all' ELSE 'day' END
      AND bucket >= $7 AND bucket < $8
    UNION ALL
    SELECT bucket, campaign, from_domain, source_ip, provider, attempts, delivered
    FROM attempt_rollup
    WHERE grain = 'hour' AND bucket >= $1 AND bucket < $2
      AND ($9 = 'hour' OR bucket < $7 OR bucket >= $8)
), tried AS (
    SELECT date_trunc($9, bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS at,
           CASE $5 WHEN 'ip' THEN source_ip WHEN 'provider' THEN provider ELSE from_domain END
               AS grp,
           sum(attempts)::bigint AS attempts, sum(delivered)::bigint AS delivered
    FROM ar
    WHERE $4::text[] IS NULL OR campaign = ANY($4::text[])
    GROUP BY 1, 2
), series AS (
    SELECT at, grp, coalesce(bounced.amount, 0) AS amount,
           coalesce(tried.attempts, 0) AS attempts, coalesce(tried.delivered, 0) AS delivered
    FROM bounced FULL JOIN tried USING (at, grp)
), kept AS (
    SELECT grp FROM series GROUP BY grp ORDER BY sum(amount) DESC, grp LIMIT $6
)
SELECT * FROM (
    SELECT true AS is_total, NULL::timestamptz AS bucket, NULL::text AS grp,
           coalesce(sum(f.amount), 0)::bigint AS amount,
           coalesce(sum(f.messages_once), 0)::bigint AS messages,
           (SELECT coalesce(sum(attempts), 0) FROM tried)::bigint AS attempts,
           (SELECT coalesce(sum(delivered), 0) FROM tried)::bigint AS delivered,
           min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen
    FROM f
    UNION ALL
    SELECT false, at, grp, amount, NULL, attempts, delivered, NULL, NULL
    FROM series
    WHERE $6::bigint IS NULL OR grp IN (SELECT grp FROM kept)
) AS points
ORDER BY is_total DESC, bucket, grp;

-- queue_stats --
-- Open deliveries by state, and the receive time of the oldest queued one (for /metrics).
SELECT d.state, count(*) AS n, min(m.received_at) AS oldest
FROM deliveries d JOIN messages m ON m.id = d.message_id
WHERE d.state IN ('queued', 'inflight')
GROUP BY d.state;

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

-- deferral_reasons --
-- The most common last replies of queued deliveries.
SELECT left(coalesce(last_reply, '(not tried yet)'), 200) AS reply, count(*) AS n
FROM deliveries WHERE state = 'queued'
GROUP BY 1 ORDER BY n DESC LIMIT $1;

-- recorded_bounces --
-- The bounce events (soft and hard, from SMTP sessions and bounce messages) of [$1, $2) in id
-- order, with what deciding them again needs: the reply, the attempt, the delivery's first
-- failure, the bounce message's action, and the verdict recorded then. Read through a cursor:
-- the server sorts the period (on disk when large), the client holds one page at a time. A
-- delivery row that is gone leaves its first failure to be found among its own soft bounces.
SELECT e.id, e.occurred_at, e.type, e.source, e.delivery_id, e.recipient, e.recipient_domain,
       e.code, e.enhanced, e.reply_text, e.synthetic, e.attempt, e.category, e.rule, e.suppress,
       e.retry_at, e.incident_id, e.detail ->> 'action' AS dsn_action,
       CASE WHEN d.id IS NOT NULL OR e.delivery_id IS NULL THEN d.first_failure_at
            ELSE (SELECT min(x.occurred_at) FROM events x
                  WHERE x.message_id = e.message_id AND x.delivery_id = e.delivery_id
                    AND x.type = 'soft_bounce' AND x.source = 'smtp')
       END AS first_failure_at
FROM events e
LEFT JOIN deliveries d ON d.id = e.delivery_id
WHERE e.type IN ('soft_bounce', 'hard_bounce')
  AND e.occurred_at >= $1 AND e.occurred_at < $2
ORDER BY e.id;

-- report_row_events --
-- The bounce events behind one row of bounce_report: of [$1, $2), types $3, campaigns $4
-- (NULL: all), whose group under grouping $5 is $6 and whose template key is $7 (hex, as the
-- row names it), newest first, before ($8, $9) in (occurred_at, id), at most $10. The key is
-- roll_up_bounces' (the codes and the template), spelled as events_report_row (0015) indexes
-- it, so a page reads the row's own events and no other bounce of the period; the group and
-- campaign are the rollup's too (NULL as ''), so the row's amount is the count of these.
SELECT e.id, e.occurred_at, e.type, e.recipient, concat_ws(' ', e.code::text, e.enhanced) AS code,
       e.reply_text, coalesce(e.template, e.reply_text, '') AS template, e.source_ip,
       e.campaign, e.queue_id, m.message_id
FROM events e
LEFT JOIN messages m ON m.id = e.message_id
WHERE e.type IN ('soft_bounce', 'hard_bounce')
  AND decode(md5(CASE WHEN e.code IS NULL AND e.enhanced IS NULL
                      THEN coalesce(e.template, e.reply_text, '')
                      ELSE coalesce(e.code::text || ' ' || e.enhanced, e.code::text, e.enhanced)
                           || E'\n' || coalesce(e.template, e.reply_text, '') END), 'hex')
      = decode($7::text, 'hex')
  AND e.occurred_at >= $1 AND e.occurred_at < $2
  AND (e.occurred_at, e.id) < ($8::timestamptz, $9::bigint)
  AND e.type = ANY($3::text[])
  AND ($4::text[] IS NULL OR coalesce(e.campaign, '') = ANY($4::text[]))
  AND CASE $5::text WHEN 'ip' THEN coalesce(e.source_ip, '')
                    WHEN 'provider' THEN coalesce(e.provider, '')
                    ELSE coalesce(e.from_domain, '') END = $6::text
ORDER BY e.occurred_at DESC, e.id DESC
LIMIT $10;
