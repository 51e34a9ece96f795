-- Provider incidents (policies/incidents.py says what they are; 0006 holds the table).

-- detect_incidents --
-- Open an incident for every (template, destination, source IP) whose hard bounces in
-- ($2, $1] reached $3 distinct recipients and a share $4 of the recipients tried there from
-- that IP; destination is the answering host ($5 = 'mx') or the recipient domain ('domain').
-- What was tried is counted in one pass over the window's events, and only when some key
-- has reached $3 (an empty candidate list skips the pass). A key with an open incident is
-- skipped; the unique index settles a race between relays.
WITH hard AS (
    SELECT e.template,
           CASE WHEN $5 = 'mx' THEN e.destination ELSE e.recipient_domain END AS destination,
           e.source_ip, count(DISTINCT e.recipient) AS recipients,
           min(e.category) AS category, max(e.code) AS code, max(e.enhanced) AS enhanced,
           max(e.reply_text) AS sample_reply
    FROM events e
    WHERE e.type = 'hard_bounce' AND e.occurred_at > $2 AND e.occurred_at <= $1
      AND e.source = 'smtp' AND NOT e.synthetic AND e.template IS NOT NULL
      AND e.source_ip IS NOT NULL AND e.destination IS NOT NULL
    GROUP BY 1, 2, 3
    HAVING count(DISTINCT e.recipient) >= $3
), fresh AS (
    SELECT h.* FROM hard h
    WHERE NOT EXISTS (SELECT 1 FROM incidents i
                      WHERE i.state = 'open' AND i.template = h.template
                        AND i.destination = h.destination AND i.scope = $5
                        AND i.source_ip = h.source_ip)
), tried AS (
    SELECT CASE WHEN $5 = 'mx' THEN t.destination ELSE t.recipient_domain END AS destination,
           t.source_ip, count(DISTINCT t.recipient) AS attempted
    FROM events t
    WHERE t.type IN ('delivered', 'soft_bounce', 'hard_bounce')
      AND t.occurred_at > $2 AND t.occurred_at <= $1
      AND (CASE WHEN $5 = 'mx' THEN t.destination ELSE t.recipient_domain END, t.source_ip)
          IN (SELECT destination, source_ip FROM fresh)
    GROUP BY 1, 2
)
INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope, source_ip,
                       category, code, enhanced, sample_reply, recipients, attempted)
SELECT $1, $1, f.template, f.destination, $5, f.source_ip, f.category, f.code, f.enhanced,
       f.sample_reply, f.recipients, t.attempted
FROM fresh f JOIN tried t USING (destination, source_ip)
WHERE f.recipients >= $4::float8 * t.attempted
ON CONFLICT DO NOTHING
RETURNING id, template, destination, scope, source_ip, recipients, attempted, category;

-- detect_resolver_incident --
-- Open a resolver incident when our resolver said "no such domain" ($6: the replies' text
-- prefix) in ($2, $1] for $3 distinct recipient domains and a share $4 of the recipient
-- domains tried in that window, unless one is open. A domain counts once whichever its
-- reply's wording (NXDOMAIN, no records), so the incident's template is the common prefix.
WITH absent AS (
    SELECT count(DISTINCT e.recipient_domain) AS domains, min(e.category) AS category,
           max(e.code) AS code, max(e.enhanced) AS enhanced, max(e.reply_text) AS sample_reply
    FROM events e
    WHERE e.type IN ('soft_bounce', 'hard_bounce') AND e.occurred_at > $2 AND e.occurred_at <= $1
      AND e.synthetic AND e.code = 550 AND starts_with(e.reply_text, $6)
    HAVING count(DISTINCT e.recipient_domain) >= $3
       AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.state = 'open' AND i.scope = $5)
), tried AS (
    SELECT count(DISTINCT t.recipient_domain) AS domains
    FROM events t
    WHERE t.type IN ('delivered', 'soft_bounce', 'hard_bounce')
      AND t.occurred_at > $2 AND t.occurred_at <= $1
      AND EXISTS (SELECT 1 FROM absent)
)
INSERT INTO incidents (opened_at, last_seen_at, template, destination, scope, source_ip,
                       category, code, enhanced, sample_reply, recipients, attempted)
SELECT $1, $1, $6, '', $5, '', a.category, a.code, a.enhanced, a.sample_reply, a.domains,
       t.domains
FROM absent a, tried t
WHERE a.domains >= $4::float8 * t.domains
ON CONFLICT DO NOTHING
RETURNING id, template, destination, scope, source_ip, recipients, attempted, category;

-- tag_resolver_incident_events --
-- The "no such domain" bounces since $2 (text prefix $3) join the resolver incident $1.
UPDATE events e SET incident_id = $1
WHERE e.type = 'hard_bounce' AND e.occurred_at > $2 AND e.incident_id IS NULL
  AND e.synthetic AND e.code = 550 AND starts_with(e.reply_text, $3)
RETURNING e.id;

-- tag_incident_events --
-- The hard bounces since $2 that an incident explains (its key, no incident yet) join it.
UPDATE events e SET incident_id = i.id
FROM incidents i
WHERE i.id = ANY($1::bigint[]) AND e.type = 'hard_bounce' AND e.occurred_at > $2
  AND e.incident_id IS NULL AND e.source = 'smtp' AND e.template = i.template
  AND e.source_ip = i.source_ip
  AND CASE WHEN i.scope = 'mx' THEN e.destination ELSE e.recipient_domain END = i.destination
RETURNING e.id;

-- lift_incident_suppressions --
-- Lift every suppression the incidents' replies made (the entry's first cause is one of them):
-- entry deleted, profile active again, an audit row each naming actor $2 and the incident.
WITH ev AS (
    SELECT id, incident_id FROM events
    WHERE incident_id = ANY($1::bigint[]) AND type = 'hard_bounce'
), d AS (
    DELETE FROM suppressions s USING ev
    WHERE s.event_id = ev.id AND s.source = 'hard_bounce'
    RETURNING s.address, s.reason, s.created_at, s.event_id, ev.incident_id
), p AS (
    UPDATE profiles SET status = 'active', status_changed_at = $4
    WHERE address IN (SELECT address FROM d) AND status = 'hard_bounced'
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $4, $2, 'suppression.remove', d.address, $3,
           jsonb_build_object('incident_id', d.incident_id, 'removed_reason', d.reason,
                              'suppressed_at', d.created_at, 'event_id', d.event_id)
    FROM d
), n AS (
    UPDATE incidents i SET lifted = i.lifted + x.n
    FROM (SELECT incident_id, count(*) AS n FROM d GROUP BY incident_id) x
    WHERE i.id = x.incident_id
)
SELECT count(*) AS lifted FROM d;

-- touch_incidents --
-- Replies matched these incidents at $1: they stay open.
UPDATE incidents SET last_seen_at = greatest(last_seen_at, $1)
WHERE id = ANY($2::bigint[]) AND state = 'open';

-- close_quiet_incidents --
-- Open incidents with no matching reply since $2 close (their replies count again).
UPDATE incidents SET state = 'closed', closed_at = $1
WHERE state = 'open' AND last_seen_at < $2
RETURNING id, template, destination, source_ip;

-- open_incidents --
-- What every relay checks its replies against.
SELECT id, template, destination, scope, source_ip FROM incidents WHERE state = 'open';

-- list_incidents --
-- Incidents, newest first; state $1 (NULL: all), $2 rows.
SELECT id, opened_at, last_seen_at, state, scope, destination, source_ip, template, category,
       code, enhanced, recipients, attempted, lifted, closed_at, released_by, release_reason,
       (SELECT count(*) FROM events e WHERE e.incident_id = incidents.id) AS replies
FROM incidents
WHERE $1::text IS NULL OR state = $1
ORDER BY opened_at DESC, id DESC
LIMIT $2;

-- incident_by_id --
SELECT id, opened_at, last_seen_at, state, scope, destination, source_ip, template, category,
       code, enhanced, sample_reply, recipients, attempted, lifted, closed_at, released_by,
       release_reason,
       (SELECT count(*) FROM events e WHERE e.incident_id = incidents.id) AS replies,
       (SELECT count(DISTINCT e.recipient) FROM events e
        WHERE e.incident_id = incidents.id) AS distinct_recipients,
       (SELECT count(*) FROM deliveries d
        WHERE d.state = 'queued'
          AND d.id IN (SELECT e.delivery_id FROM events e
                       WHERE e.incident_id = incidents.id)) AS deferred
FROM incidents WHERE id = $1;

-- release_incident --
-- An administrator ends incident $1 at $2: released (audited), and its deferred deliveries are
-- due now. Its suppressions are lifted by lift_incident_suppressions in the same transaction.
WITH r AS (
    UPDATE incidents SET state = 'released', closed_at = coalesce(closed_at, $2),
                         released_by = $3, release_reason = $4
    WHERE id = $1 AND state <> 'released'
    RETURNING id
), due AS (
    UPDATE deliveries d SET next_attempt_at = $2, updated_at = $2
    WHERE d.state = 'queued' AND d.id IN (SELECT e.delivery_id FROM events e
                                          WHERE e.incident_id IN (SELECT id FROM r))
    RETURNING d.id
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $2, $3, 'incident.release', 'incident ' || r.id, $4,
           jsonb_build_object('deferred_due_now', (SELECT count(*) FROM due))
    FROM r
)
SELECT (SELECT count(*) FROM r) AS released, (SELECT count(*) FROM due) AS due_now;
