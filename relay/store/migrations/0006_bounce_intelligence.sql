-- 0006_bounce_intelligence: provider incidents, evidence kept with every verdict, probation
-- (confirm_hard), the allowlist and suppressions scoped to one sending domain.

-- An incident: one reply template hit many distinct recipients at one destination (MX host or
-- recipient domain) from one source IP within a short window. While it is open its replies
-- are no evidence against the recipients: they defer instead of bouncing, and suppress nobody.
CREATE TABLE incidents (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    opened_at        timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    template         text        NOT NULL,
    destination      text        NOT NULL,
    scope            text        NOT NULL CHECK (scope IN ('mx', 'domain')),
    source_ip        text        NOT NULL,
    category         text,
    code             integer,
    enhanced         text,
    sample_reply     text,
    recipients       integer     NOT NULL,  -- distinct recipients with this reply at detection
    attempted        integer     NOT NULL,  -- distinct recipients tried there from that IP
    lifted           integer     NOT NULL DEFAULT 0,  -- suppressions its replies had made, lifted
    state            text        NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'closed', 'released')),
    closed_at        timestamptz,
    released_by      text,
    release_reason   text
);
-- One open incident per key, whichever relay detects it first.
CREATE UNIQUE INDEX incidents_open_key ON incidents (template, destination, scope, source_ip)
    WHERE state = 'open';

-- The evidence of each verdict, for `suppression why`, incident release and replay.
ALTER TABLE events ADD COLUMN incident_id bigint;
ALTER TABLE events ADD COLUMN suppress boolean;       -- the verdict said "suppress"
ALTER TABLE events ADD COLUMN retry_at timestamptz;   -- a deferral: when it is tried again
CREATE INDEX events_incident ON events (incident_id) WHERE incident_id IS NOT NULL;
-- (Detection reads the recent events through events_report (type, occurred_at); an index on
-- destination was measured to cost a tenth of the relay's throughput, every delivered event
-- paying for a periodic query.)


-- Claims in a row that ended with nothing recorded (the relay died or could not write the
-- outcome, and the lease ran out): past a bound the delivery is given up instead of being
-- sent again for ever without an attempt ever being counted.
ALTER TABLE deliveries ADD COLUMN unrecorded_claims integer NOT NULL DEFAULT 0;

-- [policy] confirm_hard: an address with one recipient-level hard bounce waits here for a
-- second (later, or from another IP) before it is suppressed; new mail to it is deferred.
CREATE TABLE probation (
    address      text PRIMARY KEY,           -- normalise_address()
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,       -- since + confirm_after: the probe is retried then
    source_ip    text,
    delivery_id  bigint      NOT NULL,       -- the probe: the one delivery still tried
    event_id     bigint,
    reason       text        NOT NULL
);

ALTER TABLE profiles DROP CONSTRAINT profiles_status_check;
ALTER TABLE profiles ADD CONSTRAINT profiles_status_check
    CHECK (status IN ('active', 'hard_bounced', 'complained', 'suppressed', 'probation'));

-- Never suppressed automatically: an address key, or a domain (every address in it).
CREATE TABLE allowlist (
    entry        text PRIMARY KEY,
    reason       text        NOT NULL,
    actor        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Suppressions that hold for one sending domain (the MAIL FROM domain) only.
CREATE TABLE scoped_suppressions (
    address         text        NOT NULL,
    sending_domain  text        NOT NULL,
    reason          text        NOT NULL,
    source          text        NOT NULL CHECK (source IN ('hard_bounce', 'manual', 'import',
                                                           'dsn', 'complaint')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    event_id        bigint,
    PRIMARY KEY (address, sending_domain)
);

-- Why mail from sending domain domains[i] may not go to addrs[i] (reason NULL when it may),
-- and whether the address is allowlisted: the one place for the precedence (the RCPT check,
-- the claim and automatic suppression all ask here):
--   1. an administrator's entry (manual or import), global or scoped to this sending domain;
--   2. the allowlist (the address or its domain): automatic entries do not hold for it;
--   3. an automatic global entry (hard bounce, bounce message, complaint);
--   4. an automatic entry scoped to this sending domain.
-- A set-returning SQL function with one SELECT is inlined into the calling query, so each
-- row costs the primary-key probes and nothing more (a scalar function with sub-selects is
-- not inlined and was measured ten times slower).
CREATE FUNCTION suppression_check(addrs text[], domains text[])
RETURNS TABLE (n bigint, reason text, allowlisted boolean)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT k.n,
           CASE
               WHEN g.source IN ('manual', 'import') THEN g.reason
               WHEN sc.source IN ('manual', 'import') THEN sc.reason
               WHEN a.entry IS NOT NULL OR ad.entry IS NOT NULL THEN NULL
               ELSE coalesce(g.reason, sc.reason)
           END,
           a.entry IS NOT NULL OR ad.entry IS NOT NULL
    FROM unnest(addrs, domains) WITH ORDINALITY AS k (address, domain, n)
    LEFT JOIN suppressions g ON g.address = k.address
    LEFT JOIN scoped_suppressions sc ON sc.address = k.address AND sc.sending_domain = k.domain
    LEFT JOIN allowlist a ON a.entry = k.address
    LEFT JOIN allowlist ad ON ad.entry = substring(k.address FROM '@([^@]*)$')
$$;
