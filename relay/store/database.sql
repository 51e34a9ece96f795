-- The database as a whole (database.py): its settings and whether it answers.

-- autovacuum_setting --
-- Whether the server's autovacuum runs (the queue tables need it, see 0005).
SELECT current_setting('autovacuum') = 'on' AS autovacuum;

-- durability_settings --
-- fsync and synchronous_commit: both must be on for a 250 to mean "safe".
SELECT current_setting('fsync') AS fsync,
       current_setting('synchronous_commit') AS synchronous_commit;

-- ping --
-- The database answers (for /readyz).
SELECT 1;
