-- Shaping shared by the cluster (shaping.py; policies/shaping.py decides, 0022 holds the
-- tables): each relay's round reads the limits and the other relays' use of its keys,
-- writes what changed and its own use.

-- shaping_limits_of --
-- The stored limits of the keys ($1 groups, $2 source IPs).
SELECT l.grp, l.source_ip, l.connections, l.rate, l.refused_connections, l.refused_rate,
       l.changed_at, l.grown_at
FROM unnest($1::text[], $2::text[]) AS k (grp, source_ip)
JOIN shaping_limits l USING (grp, source_ip);

-- shaping_others_use --
-- The other relays' use of the keys ($1, $2), written since $3; $4 is this relay.
SELECT u.grp, u.source_ip, u.owner, u.held, u.open_connections, u.sent, u.accepted, u.wanted
FROM unnest($1::text[], $2::text[]) AS k (grp, source_ip)
JOIN shaping_usage u USING (grp, source_ip)
WHERE u.updated_at >= $3 AND u.owner <> $4;

-- shaping_save_limits --
-- Limits that changed in this round ($1..$8 per key), at $9.
INSERT INTO shaping_limits AS l (grp, source_ip, connections, rate, refused_connections,
                                 refused_rate, changed_at, grown_at, updated_at)
SELECT grp, source_ip, connections, rate, refused_connections, refused_rate, changed_at,
       grown_at, $9
FROM unnest($1::text[], $2::text[], $3::integer[], $4::float8[], $5::integer[], $6::float8[],
            $7::timestamptz[], $8::timestamptz[])
    AS s (grp, source_ip, connections, rate, refused_connections, refused_rate, changed_at,
          grown_at)
ON CONFLICT (grp, source_ip) DO UPDATE
SET connections = excluded.connections, rate = excluded.rate,
    refused_connections = excluded.refused_connections, refused_rate = excluded.refused_rate,
    changed_at = excluded.changed_at, grown_at = excluded.grown_at,
    updated_at = excluded.updated_at;

-- shaping_log_changes --
-- Why they changed ($1..$7 per change), by relay $8 at $9.
INSERT INTO shaping_changes (grp, source_ip, what, old_value, new_value, cause, reply, at, relay)
SELECT grp, source_ip, what, old_value, new_value, cause, reply, $9, $8
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[],
            $7::text[])
    AS c (grp, source_ip, what, old_value, new_value, cause, reply);

-- shaping_save_use --
-- This relay's ($1) use of its keys ($2..$8 per key) at $9; its rows for other keys go.
WITH mine AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::integer[], $5::integer[], $6::float8[],
                         $7::float8[], $8::float8[])
        AS m (grp, source_ip, held, open_connections, sent, accepted, wanted)
), gone AS (
    DELETE FROM shaping_usage u
    WHERE u.owner = $1
      AND NOT EXISTS (SELECT 1 FROM mine m WHERE m.grp = u.grp AND m.source_ip = u.source_ip)
)
INSERT INTO shaping_usage AS u (owner, grp, source_ip, held, open_connections, sent, accepted,
                                wanted, updated_at)
SELECT $1, grp, source_ip, held, open_connections, sent, accepted, wanted, $9
FROM mine
ON CONFLICT (grp, source_ip, owner) DO UPDATE
SET held = excluded.held, open_connections = excluded.open_connections, sent = excluded.sent,
    accepted = excluded.accepted, wanted = excluded.wanted, updated_at = excluded.updated_at;

-- shaping_prune --
-- Use rows of relays gone quiet before $1, changes from before $2.
WITH stale AS (DELETE FROM shaping_usage WHERE updated_at < $1)
DELETE FROM shaping_changes WHERE at < $2;

-- shaping_overview --
-- Every stored limit and every key in use since $1, with the cluster's use of it.
WITH use AS (
    SELECT grp, source_ip, count(*) AS relays, sum(held)::integer AS held,
           sum(open_connections)::integer AS open_connections, sum(sent) AS sent,
           sum(accepted) AS accepted, sum(wanted) AS wanted
    FROM shaping_usage WHERE updated_at >= $1
    GROUP BY grp, source_ip
)
SELECT grp, source_ip, l.connections, l.rate, l.refused_connections, l.refused_rate,
       l.changed_at, l.grown_at, l.updated_at,
       coalesce(u.relays, 0) AS relays, coalesce(u.held, 0) AS held,
       coalesce(u.open_connections, 0) AS open_connections, coalesce(u.sent, 0) AS sent,
       coalesce(u.accepted, 0) AS accepted, coalesce(u.wanted, 0) AS wanted
FROM shaping_limits l FULL JOIN use u USING (grp, source_ip)
ORDER BY grp, source_ip;

-- shaping_recent_changes --
-- The last $3 changes of key ($1, $2), newest first.
SELECT at, what, old_value, new_value, cause, reply, relay
FROM shaping_changes WHERE grp = $1 AND source_ip = $2
ORDER BY at DESC, id DESC
LIMIT $3;
