-- 0005_queue_autovacuum: deliveries and messages are a queue: every delivery is updated twice
-- (claimed, finished) and every message once (body released). With the default thresholds
-- (20 % of the table) dead rows pile up between autovacuum runs, and the claim walks the dead
-- entries of the due index on every call (measured: end-to-end throughput fell by a third
-- over 50,000 messages). Vacuum these two small-row tables early and without throttling.
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.01,
                            autovacuum_vacuum_threshold = 1000,
                            autovacuum_vacuum_cost_delay = 0,
                            autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE messages SET (autovacuum_vacuum_scale_factor = 0.01,
                          autovacuum_vacuum_threshold = 1000,
                          autovacuum_vacuum_cost_delay = 0,
                          autovacuum_analyze_scale_factor = 0.02);

-- Releasing a message's body asks "any open delivery of this message?". With only
-- (message_id) indexed the planner may AND it with deliveries_open_recipient and walk every
-- open delivery of a busy recipient per message; (message_id, state) answers it alone.
DROP INDEX deliveries_message;
CREATE INDEX deliveries_message ON deliveries (message_id, state);
