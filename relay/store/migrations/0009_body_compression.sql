-- 0009_body_compression: message bodies compressed with lz4 where the server has it.
--
-- Bodies are TOASTed; PostgreSQL's default compressor (pglz) cost about a tenth of the
-- server's CPU per 20 KB message in the throughput benchmark, lz4 a fraction of that at a
-- similar size (BENCHMARKS.md). Storing them uncompressed was slower still: more WAL.
-- A server built without lz4 keeps pglz; nothing else depends on the choice.
DO $$
BEGIN
    ALTER TABLE messages ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server: message bodies stay pglz-compressed';
END
$$;
