-- Shaping shared by the cluster (policies/shaping.py; relay/store/shaping.py): each key (a
-- destination group, the provider or MX host, × a source IP) has one limit that every relay
-- process respects together, learned from the upstream's throttling replies and kept across
-- restarts.
CREATE TABLE shaping_limits (
    grp                 text             NOT NULL,  -- policies.shaping.group_of
    source_ip           text             NOT NULL,
    connections         integer          NOT NULL CHECK (connections >= 1),
    rate                double precision CHECK (rate > 0),  -- messages a minute; NULL: none
    -- The level the upstream last refused at (NULL: never; the configured ceiling holds).
    refused_connections integer,
    refused_rate        double precision,
    changed_at          timestamptz,  -- the last decrease
    grown_at            timestamptz,  -- the last increase
    updated_at          timestamptz      NOT NULL,
    PRIMARY KEY (grp, source_ip)
);

-- Why each limit is what it is (`bounce-relay shaping show`): every change, with the reply
-- that caused a decrease. Kept for 30 days (retention).
CREATE TABLE shaping_changes (
    id         bigserial        PRIMARY KEY,
    grp        text             NOT NULL,
    source_ip  text             NOT NULL,
    at         timestamptz      NOT NULL,
    what       text             NOT NULL CHECK (what IN ('connections', 'rate')),
    old_value  double precision,  -- NULL: none (an unlimited rate)
    new_value  double precision,
    cause      text             NOT NULL CHECK (cause IN ('refused', 'grew', 'lifted')),
    reply      text             NOT NULL DEFAULT '',
    relay      text             NOT NULL
);
CREATE INDEX shaping_changes_key ON shaping_changes (grp, source_ip, at DESC);
CREATE INDEX shaping_changes_at ON shaping_changes (at);

-- What each relay process does with each key: rewritten every second, worth only its last
-- seconds, so unlogged (a crash or a failover empties it; the next second fills it again).
CREATE UNLOGGED TABLE shaping_usage (
    owner            text             NOT NULL,  -- the relay process (its worker's owner)
    grp              text             NOT NULL,
    source_ip        text             NOT NULL,
    held             integer          NOT NULL,  -- connections it may open (its share, or more
                                                 -- while it closes down to a smaller one)
    open_connections integer          NOT NULL,
    sent             double precision NOT NULL,  -- transactions started a minute
    accepted         double precision NOT NULL,  -- ... the upstream took (2xx) a minute
    wanted           double precision NOT NULL,  -- ... that asked to start a minute
    updated_at       timestamptz      NOT NULL,
    PRIMARY KEY (grp, source_ip, owner)
);
