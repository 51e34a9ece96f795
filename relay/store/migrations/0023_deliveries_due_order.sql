-- The due index in the claim's order. claim_due_deliveries takes queued deliveries
-- ORDER BY next_attempt_at, message_id (a message's recipients side by side); indexed on
-- next_attempt_at alone, the deliveries that share one timestamp were read and sorted whole
-- by every claim for its batch of a few. Thousands share one: a guardrail's canary that
-- passes or a released send makes its held deliveries due at the same instant (wake_held),
-- as does a bulk retry from the admin page.
CREATE INDEX deliveries_due_order ON deliveries (next_attempt_at, message_id)
    WHERE state = 'queued';
DROP INDEX deliveries_due;
