-- 0004_dsn: bounces that arrive by mail (DSN, non-standard bounce, feedback report).
-- An event says where its reply came from: the SMTP session ('smtp') or a bounce message
-- read later ('dsn'); complaints and bounce messages the relay could not match are events too.
ALTER TABLE events ADD COLUMN source text NOT NULL DEFAULT 'smtp'
    CHECK (source IN ('smtp', 'dsn'));
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check
    CHECK (type IN ('accepted', 'rejected_suppressed', 'delivered', 'soft_bounce', 'hard_bounce',
                    'non_delivery', 'suppressed', 'complaint', 'dsn_unmatched'));
