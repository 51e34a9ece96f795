-- The due index in the claim's order. claim_due_deliveries takes queued deliveries
-- ORDER BY next_attempt_at, message_id (a message's recipients side by side); indexed on
-- next_attempt_at alone, the deliveries that share one timestamp were read and sorted whole
-- by every claim for its batch of a few. Thousands share one: a guardrail's canary that
-- passes or a released send makes its held deliveries due at the same instant (wake_held),
-- as does a bulk retry from the admin page.
-- The DROP comes first: it takes the table's strongest lock once, up front. Built first, the
-- index would hold a SHARE lock that a running relay's claim (already holding ROW SHARE)
-- waits on, and the DROP would then wait on the claim: a deadlock on every rolling upgrade.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due_order ON deliveries (next_attempt_at, message_id)
    WHERE state = 'queued';
