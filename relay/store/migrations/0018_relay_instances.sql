-- 0018_relay_instances: a relay process that dies gives its leases up within seconds, not
-- after [delivery] lease (15 minutes by default).
--
-- Every relay process that delivers has a row here under its lease owner name and says it is
-- alive every few seconds (relay_heartbeat in queue.sql; relay.delivery.worker). One silent
-- for longer than its own silent_after is presumed dead, and claim_due_deliveries takes its
-- leases over at once, fenced by the lease token as ever: a late outcome from an owner that
-- was only paused is refused.
--
-- Why a heartbeat by the database's clock, and not the two other usual ways:
-- * a session-level advisory lock held by each process does not survive PgBouncer's
--   transaction pooling (the lock stays with a server connection another client gets next),
--   and pins one connection per process outside the pool;
-- * a registry of backend pids checked against pg_stat_activity fails the same way: behind a
--   pooler the pid is the pooler's server connection, which outlives the relay (a dead relay
--   looks alive) or is replaced under a live one (a live relay looks dead), and after a
--   failover the pids are another server's.
-- A row written with now() and judged with now() holds through any pooler and any failover
-- (the table is replicated), costs one single-row update per process every few seconds, and
-- no relay's clock takes part. Its weakness, a live relay that cannot beat for silent_after
-- (an event loop stalled that long, a network cut between it and the database only), is
-- the paused relay the lease token already fences. A database outage silences everyone at
-- once; beating_since keeps that from reading as everyone dying (see claim_due_deliveries).
CREATE TABLE relay_instances (
    name           text        PRIMARY KEY,   -- the lease_owner its deliveries carry
    host           text        NOT NULL,
    pid            integer     NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL,      -- its last beat
    beating_since  timestamptz NOT NULL,      -- the first of its beats since the last gap
    stopped_at     timestamptz,               -- it stopped (SIGTERM): what it holds goes at once
    silent_after   interval    NOT NULL CHECK (silent_after > interval '0')
) WITH (fillfactor = 50);  -- every beat updates the row: room for HOT updates in place

-- Of the claims that ended with nothing recorded (unrecorded_claims, 0006), those known to
-- have started sending: the worker writes it before a send that follows such a claim. Only
-- these give a delivery up; a claim whose relay died before sending never does, so a
-- delivery is never given up before it was sent at least once.
ALTER TABLE deliveries ADD COLUMN unrecorded_sends integer NOT NULL DEFAULT 0;
