-- 0019_retention: events in time partitions that are created ahead and dropped once their
-- rows are older than [retention] events (relay/store/lifecycle.sql, relay/ops/maintenance.py).
--
-- Until now every event landed in events_default and nothing was ever removed. Dropping a
-- partition frees its space at once, takes its parent's lock for a moment (bounded by
-- lock_timeout) and leaves nothing for vacuum; DELETE of a month of events would hold its
-- transaction for hours and leave the table and its seven indexes bloated.
--
-- The functions below are the DDL of the data lifecycle (an identifier cannot be a query
-- parameter, so it is formatted here, quoted, and nowhere else). Their DDL waits at most
-- lock_timeout for the parent's lock: a long report holding it makes the step fail and the
-- next run try again, instead of the intake's inserts queueing behind the DDL's lock request.
--
-- The rows already in events_default stay where they are: the table is detached, renamed
-- events_before_0019 and attached again as the partition of everything before the end of the
-- current week (MINVALUE .. boundary), to be dropped whole once that boundary is older than
-- the events window. Attaching it reads the table once to check the bound (no row is
-- rewritten; measured in BENCHMARKS.md, "Data lifecycle"); moving every row into its own week
-- would rewrite the table and its indexes while the relay waits. Events dated after the
-- boundary (a clock ahead) go to the new, empty events_default, and on into their partition
-- when the maintenance creates it. The whole migration holds events' lock: intake waits for it.

-- The bounds of one range partition of a table partitioned by a timestamptz (NULL: MINVALUE or
-- MAXVALUE), or is_default. Read back from the catalog's text in UTC and ISO, the way it was
-- written.
CREATE FUNCTION retention_partition_bounds(part regclass)
RETURNS TABLE (lower timestamptz, upper timestamptz, is_default boolean)
LANGUAGE plpgsql STABLE SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD'
AS $$
DECLARE
    bound text := (SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.oid = part);
    parts text[] := regexp_match(
        bound, '^FOR VALUES FROM \((?:''([^'']*)''|MINVALUE)\) TO \((?:''([^'']*)''|MAXVALUE)\)$');
BEGIN
    is_default := bound = 'DEFAULT';
    lower := parts[1]::timestamptz;
    upper := parts[2]::timestamptz;
    RETURN NEXT;
END
$$;

-- The partition of parent for [lower, upper), named <parent>_<YYYYMMDD of lower, UTC>. Rows
-- the default partition holds in that range move into it in the same transaction (a partition
-- cannot be created while the default partition has rows that belong to it). Inserted into
-- the partition itself, they fire none of the parent's statement triggers (webhooks, 0007):
-- they are not new events.
CREATE FUNCTION retention_create_partition(parent regclass, lower timestamptz, upper timestamptz)
RETURNS TABLE (partition text, moved bigint)
LANGUAGE plpgsql SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' SET lock_timeout = '1s'
AS $$
DECLARE
    key text := (regexp_match(pg_get_partkeydef(parent), '^RANGE \((\w+)\)$'))[1];
    schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = parent);
    default_part regclass := (SELECT i.inhrelid::regclass FROM pg_inherits i
                              WHERE i.inhparent = parent
                                AND (SELECT b.is_default FROM retention_partition_bounds(i.inhrelid) b));
    cols text := (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                  FROM pg_attribute a
                  WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped);
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION '% is not partitioned by the range of one column', parent;
    END IF;
    IF NOT lower < upper THEN
        RAISE EXCEPTION 'empty partition range [%, %)', lower, upper;
    END IF;
    partition := (SELECT c.relname FROM pg_class c WHERE c.oid = parent) || '_'
                 || to_char(lower, 'YYYYMMDD');
    moved := 0;
    IF default_part IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE %I >= $1 AND %I < $2', default_part, key, key)
            INTO moved USING lower, upper;
    END IF;
    IF moved > 0 THEN
        EXECUTE format('CREATE TEMP TABLE retention_moving ON COMMIT DROP AS '
                       'SELECT %s FROM %s WITH NO DATA', cols, default_part);
        EXECUTE format('WITH gone AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING %s) '
                       'INSERT INTO retention_moving SELECT * FROM gone',
                       default_part, key, key, cols)
            USING lower, upper;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   schema, partition, parent, lower, upper);
    IF moved > 0 THEN
        EXECUTE format('INSERT INTO %I.%I (%s) OVERRIDING SYSTEM VALUE SELECT * FROM retention_moving',
                       schema, partition, cols);
        DROP TABLE retention_moving;
    END IF;
    RETURN NEXT;
END
$$;

-- Drop range partition part, whose rows are all before older_than (refused otherwise: the
-- caller's arithmetic is checked against the catalog once more). Never the default one.
CREATE FUNCTION retention_drop_partition(part regclass, older_than timestamptz)
RETURNS void
LANGUAGE plpgsql SET lock_timeout = '1s'
AS $$
DECLARE
    b record;
BEGIN
    SELECT * INTO b FROM retention_partition_bounds(part);
    IF b.is_default OR b.upper IS NULL OR b.upper > older_than THEN
        RAISE EXCEPTION 'partition % holds rows from % on, not all before %',
            part, coalesce(b.lower::text, 'MINVALUE'), older_than;
    END IF;
    EXECUTE format('DROP TABLE %s', part);
END
$$;

-- The rows of a partition: PostgreSQL's estimate where it has one (autovacuum analyzes every
-- partition as it fills), else counted (a partition never analyzed is small or new).
CREATE FUNCTION retention_partition_rows(part regclass)
RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    estimate real := (SELECT c.reltuples FROM pg_class c WHERE c.oid = part);
    counted bigint;
BEGIN
    IF estimate >= 0 THEN
        RETURN estimate::bigint;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', part) INTO counted;
    RETURN counted;
END
$$;

DO $$
DECLARE
    week timestamptz := date_trunc('week', now(), 'UTC');
    boundary timestamptz := week + interval '1 week';
    idx record;
BEGIN
    IF EXISTS (SELECT 1 FROM events_default) THEN
        ALTER TABLE events DETACH PARTITION events_default;
        ALTER TABLE events_default RENAME TO events_before_0019;
        FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = 'events_before_0019'::regclass LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.relname,
                           replace(idx.relname, 'events_default', 'events_before_0019'));
        END LOOP;
        CREATE TABLE events_default PARTITION OF events DEFAULT;
        WITH ahead AS (DELETE FROM events_before_0019 WHERE occurred_at >= boundary RETURNING *)
        INSERT INTO events_default OVERRIDING SYSTEM VALUE SELECT * FROM ahead;
        EXECUTE format('ALTER TABLE events ATTACH PARTITION events_before_0019 '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', boundary);
    ELSE
        PERFORM retention_create_partition('events', week, boundary);
    END IF;
    -- The two weeks ahead; the maintenance keeps it so, by the relay's clock.
    PERFORM retention_create_partition('events', boundary, boundary + interval '1 week');
    PERFORM retention_create_partition('events', boundary + interval '1 week',
                                       boundary + interval '2 weeks');
END
$$;

-- [retention] admin_audit: the rows older than the window are found by time.
CREATE INDEX admin_audit_occurred_at ON admin_audit (occurred_at);
