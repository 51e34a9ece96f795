-- 0015_report_row_events: the admin page's report lists the bounce events behind a row.
--
-- A report row is a group and a text: its template key, md5 of the reply's codes and its
-- template, as roll_up_bounces (reports.sql) computes it. The events behind a row are those
-- of the period with that key in that group, newest first, a page at a time (keyset on
-- occurred_at, id). events_report (type, occurred_at) would read every bounce of the period
-- to find them: a month of a busy relay is millions of rows, for a text that may have a few
-- dozen. Indexed by the key, a page reads the row's own events and stops.
--
-- The expression is roll_up_bounces' key with concat_ws (stable, so not allowed in an index)
-- spelled with || and coalesce (immutable), which give the same text for every combination
-- of NULL and empty codes; report_row_events uses it word for word, so the planner matches
-- it. Only bounces are indexed: the other events (accepted, delivered ...) are never asked.
-- It costs each bounce event one more index entry, and nothing to any other event.
CREATE INDEX events_report_row ON events (
    (decode(md5(CASE WHEN code IS NULL AND enhanced IS NULL
                     THEN coalesce(template, reply_text, '')
                     ELSE coalesce(code::text || ' ' || enhanced, code::text, enhanced)
                          || E'\n' || coalesce(template, reply_text, '') END), 'hex')),
    occurred_at, id
) WHERE type IN ('soft_bounce', 'hard_bounce');
