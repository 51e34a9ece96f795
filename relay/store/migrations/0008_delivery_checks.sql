-- 0008_delivery_checks: what a delivery is checked against when it is leased, in one place.
--
-- claim_due_deliveries leases queued work; accept_messages leases the deliveries of a batch
-- as it commits them when the committing relay sends them at once (relay.commit). Both
-- return each delivery with the suppression precedence for its message's sending domain
-- (suppression_check, 0006) and its address's probation. One SELECT in SQL, STABLE: the
-- planner inlines it into either statement.
CREATE FUNCTION delivery_checks(address text, envelope_sender text)
RETURNS TABLE (suppressed boolean, allowlisted boolean, probation probation)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT s.reason IS NOT NULL, s.allowlisted,
           (SELECT p FROM probation p WHERE p.address = $1)
    FROM suppression_check(ARRAY[$1], ARRAY[lower(substring($2 FROM '@([^@>]*)>?$'))]) s
$$;
