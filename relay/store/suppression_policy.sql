-- The allowlist, suppressions scoped to one sending domain, and the evidence behind an entry.
-- Precedence between them is suppression_check's (0006).

-- allowlist --
SELECT entry, reason, actor, created_at FROM allowlist ORDER BY entry;

-- allowlist_add --
-- Allowlist an address key or domain $1 (audited); true if it was not listed.
WITH ins AS (
    INSERT INTO allowlist (entry, reason, actor) VALUES ($1, $2, $3)
    ON CONFLICT (entry) DO NOTHING
    RETURNING entry
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason)
    SELECT $3, 'allowlist.add', entry, $2 FROM ins
)
SELECT EXISTS (SELECT 1 FROM ins);

-- allowlist_remove --
WITH d AS (
    DELETE FROM allowlist WHERE entry = $1 RETURNING entry, reason
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $3, 'allowlist.remove', entry, $2, jsonb_build_object('removed_reason', d.reason)
    FROM d
)
SELECT EXISTS (SELECT 1 FROM d);

-- add_scoped_suppression --
-- An administrator suppresses address $1 for sending domain $2 only (audited).
WITH ins AS (
    INSERT INTO scoped_suppressions (address, sending_domain, reason, source)
    VALUES ($1, $2, $3, 'manual')
    ON CONFLICT (address, sending_domain) DO NOTHING
    RETURNING address
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $4, 'suppression.add', address, $3, jsonb_build_object('sending_domain', $2::text)
    FROM ins
)
SELECT EXISTS (SELECT 1 FROM ins);

-- remove_scoped_suppression --
WITH d AS (
    DELETE FROM scoped_suppressions WHERE address = $1 AND sending_domain = $2
    RETURNING address, sending_domain, reason, source, created_at
), a AS (
    INSERT INTO admin_audit (actor, action, subject, reason, detail)
    SELECT $3, 'suppression.remove', address, $4,
           jsonb_build_object('sending_domain', sending_domain, 'removed_reason', reason,
                              'removed_source', source, 'suppressed_at', created_at)
    FROM d
)
SELECT EXISTS (SELECT 1 FROM d);

-- evidence_entries --
-- Every entry that applies to address $1: global, scoped, allowlist (address or domain),
-- probation.
SELECT 'global' AS kind, NULL::text AS scope, reason, source, created_at, event_id,
       NULL::timestamptz AS until
FROM suppressions WHERE address = $1
UNION ALL
SELECT 'scoped', sending_domain, reason, source, created_at, event_id, NULL
FROM scoped_suppressions WHERE address = $1
UNION ALL
SELECT 'allowlist', entry, reason, 'allowlist', created_at, NULL::bigint, NULL
FROM allowlist WHERE entry = $1 OR entry = substring($1 FROM '@([^@]*)$')
UNION ALL
SELECT 'probation', NULL, reason, 'confirm_hard', since, event_id, until
FROM probation WHERE address = $1;

-- evidence_bounces --
-- Every bounce and complaint recorded for address $1, newest first, with the incident each
-- belongs to (if any).
SELECT e.id AS event_id, e.occurred_at, e.type, e.source, e.code, e.enhanced, e.reply_text,
       e.template, e.category, e.source_ip, e.destination, e.campaign, e.from_domain, e.rule,
       e.suppress, e.retry_at, e.queue_id, e.incident_id, i.state AS incident_state
FROM events e LEFT JOIN incidents i ON i.id = e.incident_id
WHERE e.recipient = $1 AND e.type IN ('hard_bounce', 'soft_bounce', 'complaint', 'non_delivery')
ORDER BY e.occurred_at DESC, e.id DESC
LIMIT 200;

-- evidence_audit --
-- Administrators' (and incident detection's) acts on address $1.
SELECT occurred_at, actor, action, reason, detail FROM admin_audit
WHERE subject = $1 ORDER BY occurred_at DESC, id DESC LIMIT 100;
