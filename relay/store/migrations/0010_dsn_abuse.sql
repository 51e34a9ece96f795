-- 0010_dsn_abuse: the DSN domain takes mail from anyone; what that may cost is bounded.
--
-- A bounce message's result counts once per delivery and action: the same "delayed" DSN sent
-- five times is one soft bounce, not five. apply_dsn_results takes the key in the statement
-- that records the event, so two copies arriving at once cannot both count (the second waits
-- for the first's commit, then finds the key taken).
CREATE TABLE dsn_results (
    delivery_id  bigint      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    action       text        NOT NULL,   -- the report's Action: failed, delayed, complaint, ...
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, action)
);

-- Bounce messages the relay could not use are kept as dsn_unmatched events for inspection, at
-- most [dsn] max_unmatched_per_client per client address and hour (counted through this
-- index), and for [dsn] unmatched_retention (expired through events_report).
CREATE INDEX events_dsn_unmatched_peer ON events ((detail ->> 'peer'), occurred_at)
    WHERE type = 'dsn_unmatched';
