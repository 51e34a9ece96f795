-- 0016_queue_console: what the queue page's listing and its audited actions read.
--
-- The queue page lists deliveries newest first (id descending), a page at a time by id, most
-- often the open ones: "queued" (waiting or deferred) or "inflight". Deliveries are kept once
-- final, so the open ones are a small part of a big table, and with only the primary key a
-- page of them walks every final delivery in between (measured on 2 million deliveries with
-- 52,000 queued: a page past the newest 50,000 read 1,500 pages of index and heap, 11 ms; on
-- a longer history it grows with it). This index holds the open deliveries only, as
-- deliveries_open_recipient does: any page of them reads about 50 entries (0.9 ms there). It
-- costs the queue one more index entry when a delivery is accepted, claimed or deferred; a
-- finished delivery leaves it.
CREATE INDEX deliveries_open_newest ON deliveries (id) WHERE state IN ('queued', 'inflight');

-- Retry and purge write one audit row per delivery, up to 10,000 in one action, so the audit
-- table grows faster than by hand; the history of a delivery (and of an address, the profile
-- page's "Administrators' acts") reads its rows by address.
CREATE INDEX admin_audit_subject ON admin_audit (subject, occurred_at);
