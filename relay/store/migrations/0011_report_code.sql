-- 0011_report_code: the bounces report shows each row's reply code and enhanced status.
--
-- A row is one reply as the provider sent it, codes included: "452 4.2.2" and "552 5.2.2"
-- with the same words are two rows (a soft and a permanent full mailbox say different things
-- to an operator). Rows rolled up before this migration carry code '' (unknown): their events
-- are not read again, and they age out of the report's period.
ALTER TABLE bounce_rollup ADD COLUMN code text NOT NULL DEFAULT '';
