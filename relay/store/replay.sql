-- Queries of `bounce-relay classify --replay`: recorded bounces read back to be judged again
-- by another rule set. Placeholders are asyncpg's $1..$n.

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
