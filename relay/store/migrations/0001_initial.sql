-- 0001_initial: messages, deliveries, events, suppressions, profiles, admin audit.
-- A released migration is never edited; later changes go in 0002_... files.

CREATE TABLE messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id         text        NOT NULL UNIQUE,
    received_at      timestamptz NOT NULL DEFAULT now(),
    envelope_sender  text        NOT NULL,
    from_domain      text,
    message_id       text,                   -- the Message-ID header
    campaign         text,                   -- from the configured campaign header
    size             integer     NOT NULL,
    body             bytea,                  -- NULL once every delivery is final
    client_address   text,
    session_id       text,
    smtputf8         boolean     NOT NULL DEFAULT false
);
CREATE INDEX messages_received_at ON messages (received_at);
CREATE INDEX messages_campaign ON messages (campaign, received_at);

CREATE TABLE deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id        bigint      NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    recipient         text        NOT NULL,   -- as the client wrote it
    recipient_key     text        NOT NULL,   -- normalise_address(recipient)
    recipient_domain  text        NOT NULL,
    state             text        NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'inflight', 'delivered', 'bounced', 'expired', 'cancelled')),
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    first_failure_at  timestamptz,
    lease_until       timestamptz,
    lease_owner       text,
    lease_token       bigint,               -- fencing: an update must hold the token it claimed with
    last_source_ip    text,
    avoid_source_ip   text,                 -- a retry rule with source = "other_ip" set this
    last_code         integer,
    last_reply        text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, recipient_key)
);
-- The claim reads due queued rows and expired leases; both partial indexes stay small.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'queued';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE state = 'inflight';
CREATE INDEX deliveries_open_recipient ON deliveries (recipient_key)
    WHERE state IN ('queued', 'inflight');
CREATE INDEX deliveries_message ON deliveries (message_id);

CREATE SEQUENCE lease_tokens;

-- Append-only bounce records and state changes. Partitioned by time so that the
-- report and retention stay cheap; rows land in the default partition until an
-- operator (or a later migration) adds monthly ones.
CREATE TABLE events (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at       timestamptz NOT NULL DEFAULT now(),
    type              text        NOT NULL
        CHECK (type IN ('accepted', 'rejected_suppressed', 'delivered', 'soft_bounce',
                        'hard_bounce', 'non_delivery', 'suppressed')),
    message_id        bigint,
    delivery_id       bigint,
    queue_id          text,
    campaign          text,
    from_domain       text,
    envelope_sender   text,
    source_ip         text,
    destination       text,                 -- route / MX host that answered
    recipient         text,
    recipient_domain  text,
    code              integer,
    enhanced          text,
    reply_text        text,
    template          text,
    category          text,
    attempt           integer,
    rule              text,
    synthetic         boolean     NOT NULL DEFAULT false,  -- reply produced by the relay itself
    detail            jsonb,
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_report ON events (type, occurred_at);
CREATE INDEX events_message ON events (message_id);
CREATE INDEX events_recipient ON events (recipient);

CREATE TABLE suppressions (
    address      text PRIMARY KEY,           -- normalise_address()
    reason       text        NOT NULL,
    source       text        NOT NULL CHECK (source IN ('hard_bounce', 'manual', 'import', 'dsn',
                                                        'complaint')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    event_id     bigint,                      -- the bounce that caused it
    event_at     timestamptz
);
CREATE INDEX suppressions_created_at ON suppressions (created_at);

CREATE TABLE profiles (
    address            text PRIMARY KEY,     -- normalise_address()
    status             text        NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'hard_bounced', 'complained')),
    status_changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE admin_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    subject     text        NOT NULL,
    reason      text        NOT NULL,
    detail      jsonb
);
