"""`bounce-relay store retention [--dry-run]` as an operator meets it: what a run would do,
the run itself, a second run with nothing left, another relay holding the lock, a bad key.

The command runs on the machine's clock, so what it finds is seeded relative to now."""

from __future__ import annotations

import asyncpg

from tests.support.cli import run

_LOCK = 0x6272_7265_7465  # relay/store/lifecycle.py: the data lifecycle's advisory lock


def _rows(stdout: str) -> list[dict[str, str]]:
    header, *rows = stdout.splitlines()
    names = header.split("\t")
    return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]


async def test_store_retention_shows_then_drops_a_day_past_the_window(db_dsn, write_config):
    config = write_config(
        f'[store]\ndsn = "{db_dsn}"\n[retention]\nevents = "14d"\nevent_partitions = "day"\n',
        replace_base=True,
    )
    db = await asyncpg.connect(db_dsn)
    try:
        old = await db.fetchval(
            "SELECT partition FROM retention_create_partition('events', "
            "date_trunc('day', now() - interval '30 days', 'UTC'), "
            "date_trunc('day', now() - interval '29 days', 'UTC'))"
        )
        await db.execute(
            "INSERT INTO events (occurred_at, type) "
            "SELECT date_trunc('day', now() - interval '30 days', 'UTC') + interval '1 hour', "
            "'accepted' FROM generate_series(1, 2)"
        )

        dry = await run(config, "store", "retention", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        planned = _rows(dry.stdout)
        [drop] = [r for r in planned if r["action"] == "drop"]
        assert (drop["table"], drop["partition"], drop["rows"]) == ("events", old, "2")
        assert int(drop["bytes"]) > 0
        deletes = {r["table"] for r in planned if r["action"] == "delete"}
        assert deletes == {
            "messages",
            "deliveries",
            "webhook_outbox",
            "unmatched_bounces",
            "events_default",
        }  # not admin_audit: the audit log is kept unless [retention] admin_audit is set
        assert await db.fetchval("SELECT to_regclass($1) IS NOT NULL", old)

        done = await run(config, "store", "retention")
        assert done.returncode == 0, done.stderr
        [dropped] = [r for r in _rows(done.stdout) if r["action"] == "drop"]
        assert (dropped["partition"], dropped["rows"]) == (old, "2")
        assert not await db.fetchval("SELECT to_regclass($1) IS NOT NULL", old)
        assert await db.fetchval("SELECT count(*) FROM events") == 0

        again = await run(config, "store", "retention", "--dry-run")
        assert again.returncode == 0, again.stderr
        assert [r for r in _rows(again.stdout) if r["action"] != "delete"] == []

        # Another relay process is at it: the run says so and changes nothing; a dry run
        # still shows what it would do.
        await db.execute("SELECT pg_advisory_lock($1)", _LOCK)
        busy = await run(config, "store", "retention")
        assert busy.returncode == 1
        assert busy.stdout == ""
        assert busy.stderr == (
            "bounce-relay: another relay process is running the data lifecycle right now; "
            "try again in a minute, or see what it would do with --dry-run\n"
        )
        assert (await run(config, "store", "retention", "--dry-run")).returncode == 0
    finally:
        await db.close()


async def test_store_retention_refuses_a_bad_window_before_touching_the_database(
    db_dsn, write_config
):
    config = write_config(
        f'[store]\ndsn = "{db_dsn}"\n[retention]\nevents = "400d"\nevent_partitions = "day"\n',
        replace_base=True,
    )
    bad = await run(config, "store", "retention")
    assert bad.returncode == 2
    assert "retention.event_partitions" in bad.stderr
    assert "keeps about 400 partitions of events" in bad.stderr
    assert bad.stdout == ""
