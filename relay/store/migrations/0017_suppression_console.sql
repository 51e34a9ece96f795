-- 0017_suppression_console: the profile page lists the deliveries to one address, newest
-- first (suppression.sql deliveries_of_address). Only open deliveries were indexed by
-- recipient (deliveries_open_recipient, for the claim), so that query read the whole
-- deliveries table. The cost: one more index entry per new row version of a delivery (its
-- insert, and each update that is not HOT, as the state changes already are). Built inside the
-- migration's transaction: writes to deliveries wait while it builds.
CREATE INDEX deliveries_recipient ON deliveries (recipient_key, id);
