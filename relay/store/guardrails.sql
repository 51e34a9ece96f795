-- Guardrails (guardrails.py; policies/guardrails.py judges, 0021 holds the table): the sends
-- to judge and their counts, state changes, the holds every worker reloads, the canary's
-- reservations, an administrator's release.

-- guardrail_sends --
-- The sends (campaign × From domain × provider) with attempts in an hour from $1 on, and
-- every canary (one whose slice's attempts all count under other providers has none), with
-- their guardrail rows when they have one; campaigns only ('' is mail with no campaign).
SELECT a.campaign, a.from_domain, a.provider, g.state, g.since, g.canary_slice, g.canary_sent,
       g.level, g.released_at, g.baseline
FROM (SELECT campaign, from_domain, provider FROM attempt_rollup
      WHERE grain = 'hour' AND bucket >= date_trunc('hour', $1::timestamptz)
        AND campaign <> ''
      UNION
      SELECT campaign, from_domain, provider FROM guardrails WHERE state = 'canary') a
LEFT JOIN guardrails g USING (campaign, from_domain, provider);

-- guardrail_counts --
-- What each send ($1 campaigns, $2 From domains, $3 providers) did from the hour of $4 on
-- (policies.guardrails.SendCounts): attempts and deliveries, hard bounces (any 5xx, those
-- about the recipient ($5: its categories), unknown users) and complaints. Bounces are
-- counted per delivery (the rollup's events), as attempts are: a message to ten recipients
-- with one unknown is one bounce in ten attempts, not one bounced message in one.
WITH s AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
        AS s (campaign, from_domain, provider, start)
), a AS (
    SELECT s.campaign, s.from_domain, s.provider,
           sum(r.attempts)::bigint AS attempts, sum(r.delivered)::bigint AS delivered
    FROM s JOIN attempt_rollup r
      ON r.grain = 'hour' AND r.campaign = s.campaign AND r.from_domain = s.from_domain
     AND r.provider = s.provider AND r.bucket >= date_trunc('hour', s.start)
    GROUP BY 1, 2, 3
), b AS (
    SELECT s.campaign, s.from_domain, s.provider,
           sum(r.amount)::bigint AS bounced,
           sum(r.amount) FILTER (WHERE r.category = ANY($5::text[]))::bigint AS hard_bounced,
           sum(r.amount) FILTER (WHERE r.category = 'user_unknown')::bigint AS unknown_users
    FROM s JOIN bounce_rollup_hour r
      ON r.type = 'hard_bounce' AND r.campaign = s.campaign AND r.from_domain = s.from_domain
     AND r.provider = s.provider AND r.bucket >= date_trunc('hour', s.start)
    GROUP BY 1, 2, 3
), c AS (
    SELECT s.campaign, s.from_domain, s.provider, count(*) AS complaints
    FROM s JOIN events e
      ON e.type = 'complaint' AND e.occurred_at >= date_trunc('hour', s.start)
     AND e.campaign = s.campaign AND coalesce(e.from_domain, '') = s.from_domain
     AND coalesce(e.provider, '') = s.provider
    GROUP BY 1, 2, 3
)
SELECT s.campaign, s.from_domain, s.provider,
       coalesce(a.attempts, 0) AS attempts, coalesce(a.delivered, 0) AS delivered,
       coalesce(b.bounced, 0) AS bounced, coalesce(b.hard_bounced, 0) AS hard_bounced,
       coalesce(b.unknown_users, 0) AS unknown_users, coalesce(c.complaints, 0) AS complaints
FROM s
LEFT JOIN a USING (campaign, from_domain, provider)
LEFT JOIN b USING (campaign, from_domain, provider)
LEFT JOIN c USING (campaign, from_domain, provider);

-- guardrail_samples --
-- The replies behind send ($1, $2, $3)'s hard bounces from the hour of $4 on: the $5 most
-- frequent texts, with a raw sample each (the evidence an operator reads).
SELECT template, category, code, max(sample) AS sample, sum(amount)::bigint AS amount
FROM bounce_rollup_hour
WHERE type = 'hard_bounce' AND campaign = $1 AND from_domain = $2 AND provider = $3
  AND bucket >= date_trunc('hour', $4::timestamptz)
GROUP BY template, category, code
ORDER BY amount DESC, template
LIMIT $5;

-- open_guardrail --
-- Send ($1, $2, $3) seen at $4 with no row yet: 'open', counted from $4.
INSERT INTO guardrails (campaign, from_domain, provider, state, since, updated_at)
VALUES ($1, $2, $3, 'open', $4, $4)
ON CONFLICT DO NOTHING;

-- start_canary --
-- Send ($1, $2, $3) claimed for the first time at $4: a canary of $5 deliveries (a row that
-- exists already is left as it is). Its state, and whether this statement inserted it. (No
-- row: another transaction inserted it while this one ran; ask again.)
WITH new AS (
    INSERT INTO guardrails (campaign, from_domain, provider, state, since, canary_slice,
                            updated_at)
    VALUES ($1, $2, $3, 'canary', $4, $5, $4)
    ON CONFLICT DO NOTHING
    RETURNING state
)
SELECT state, true AS inserted FROM new
UNION ALL
SELECT state, false FROM guardrails
WHERE campaign = $1 AND from_domain = $2 AND provider = $3 AND NOT EXISTS (SELECT 1 FROM new);

-- campaign_messages --
-- Messages of campaign $1 from $2 received so far (a canary's share is of these).
SELECT count(*) FROM messages WHERE campaign = $1 AND coalesce(from_domain, '') = $2;

-- reserve_canary --
-- Let up to $4 more deliveries of send ($1, $2, $3) go while it is a canary; how many may go
-- (0 once the slice is spent; NULL when the send is no canary any more).
WITH r AS (
    SELECT canary_slice - canary_sent AS left_over FROM guardrails
    WHERE campaign = $1 AND from_domain = $2 AND provider = $3 AND state = 'canary'
    FOR UPDATE
), u AS (
    UPDATE guardrails g SET canary_sent = canary_sent + least($4, greatest(r.left_over, 0))
    FROM r
    WHERE g.campaign = $1 AND g.from_domain = $2 AND g.provider = $3
    RETURNING least($4, greatest(r.left_over, 0)) AS granted
)
SELECT granted FROM u;

-- guardrail_holds --
-- The sends every worker holds back: paused, or canaries (whose slice it reserves).
SELECT campaign, from_domain, provider, state FROM guardrails WHERE state <> 'open';

-- judge_guardrail --
-- Send ($1, $2, $3) judged at $4: level $5, reason $6; the new state $7 (NULL: unchanged),
-- with $8 the evidence when it trips. Fenced on the state it was judged in ($9): a release or
-- another relay's judgement meanwhile wins. Whether the row changed.
UPDATE guardrails
SET level = $5, reason = $6, checked_at = $4,
    state = coalesce($7, state),
    evidence = CASE WHEN $7 = 'paused' THEN $8::jsonb ELSE evidence END,
    tripped_at = CASE WHEN $7 = 'paused' THEN $4 ELSE tripped_at END,
    updated_at = CASE WHEN $7 IS NOT NULL THEN $4 ELSE updated_at END
WHERE campaign = $1 AND from_domain = $2 AND provider = $3 AND state = $9
RETURNING 1;

-- wake_held --
-- The deliveries of campaign $1 from $2 handed back untried (a guardrail or a throttle held
-- them) are due now ($3): a send that opens does not wait out the holds' recheck.
UPDATE deliveries d SET next_attempt_at = $3, updated_at = $3
WHERE d.state = 'queued' AND d.attempts = 0 AND d.next_attempt_at > $3
  AND d.message_id IN (SELECT id FROM messages
                       WHERE campaign = $1 AND coalesce(from_domain, '') = $2);

-- release_guardrail --
-- An administrator releases paused send ($1, $2, $3) at $4 ($5 who, $6 why; audited): open,
-- judged from here on against the baseline $7 (its counts now).
WITH r AS (
    UPDATE guardrails
    SET state = 'open', released_at = $4, released_by = $5, baseline = $7::jsonb,
        level = 'unknown', reason = '', updated_at = $4
    WHERE campaign = $1 AND from_domain = $2 AND provider = $3 AND state = 'paused'
    RETURNING campaign, from_domain, provider, evidence
)
INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
SELECT $4, $5, 'guardrail.release',
       'guardrail ' || r.campaign || ' / ' || r.from_domain || ' / ' || r.provider, $6,
       jsonb_build_object('evidence', r.evidence)
FROM r
RETURNING 1;

-- list_guardrails --
-- Every send's guardrail, held ones first, newest first; $1: only these states (NULL: all).
SELECT campaign, from_domain, provider, state, since, canary_slice, canary_sent, level, reason,
       evidence, tripped_at, released_at, released_by, baseline, checked_at, updated_at
FROM guardrails
WHERE $1::text[] IS NULL OR state = ANY($1::text[])
ORDER BY state = 'open', updated_at DESC, campaign, from_domain, provider
LIMIT $2;

-- guardrail --
-- One send's guardrail.
SELECT campaign, from_domain, provider, state, since, canary_slice, canary_sent, level, reason,
       evidence, tripped_at, released_at, released_by, baseline, checked_at, updated_at
FROM guardrails WHERE campaign = $1 AND from_domain = $2 AND provider = $3;
