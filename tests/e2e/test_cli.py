"""`bounce-relay` as a subprocess: check-config, serve, migrate, two relays at once."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from relay.store.migrate import apply_migrations, available_migrations
from tests.support.cli import REPO, free_port, run_cli


def test_repo_config_is_valid():
    """The config.toml shipped in the repo passes check-config unchanged."""
    result = run_cli("check-config", "--config", str(REPO / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_names_every_bad_key_and_its_line(tmp_path):
    """Unknown key, bad duration, bad CIDR and a missing file are each named, with lines."""
    path = tmp_path / "broken.toml"
    path.write_text(
        "[smtp]\n"
        'listen = "127.0.0.1:2525"\n'
        'allowed_clients = ["127.0.0.0/8", "10.0.0.300/8"]\n'
        'tls_cert = "missing-cert.pem"\n'
        'tls_key = "missing-key.pem"\n'
        'colour = "blue"\n'
        "\n"
        "[retry]\n"
        'schedule = ["5m", "fortnight"]\n'
        'max_age = "3 days"\n'
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    err = result.stderr
    assert "smtp.allowed_clients (line 3)" in err and "bad CIDR" in err
    assert "smtp.tls_cert (line 4)" in err and "file not found" in err
    assert "smtp.colour (line 6): unknown key" in err
    assert "retry.schedule (line 9)" in err and "'fortnight'" in err
    assert "retry.max_age (line 10)" in err and "bad duration" in err


def test_config_location_from_environment(tmp_path):
    """Without --config, $BOUNCE_RELAY_CONFIG names the file; a missing file is an error."""
    path = tmp_path / "elsewhere.toml"
    path.write_text('[smtp]\nlisten = "127.0.0.1:2600"\n')
    ok = run_cli("check-config", env={"BOUNCE_RELAY_CONFIG": str(path)})
    assert ok.returncode == 0, ok.stderr
    missing = run_cli("check-config", env={"BOUNCE_RELAY_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 2
    assert "not found" in missing.stderr


def test_secrets_from_environment(tmp_path):
    """A value written env:NAME is read from the environment; an unset one is an error."""
    path = tmp_path / "c.toml"
    path.write_text('[store]\ndsn = "env:BR_TEST_DSN"\n')
    unset = run_cli("check-config", "--config", str(path), env={"BR_TEST_DSN": ""})
    assert unset.returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "BR_TEST_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "store.dsn (line 2): environment variable BR_TEST_DSN is not set" in result.stderr


def _write_serve_config(tmp_path: Path, port: int, dsn: str = "", name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'[smtp]\nlisten = "127.0.0.1:{port}"\nhostname = "relay.test"\n'
        f'[store]\ndsn = "{dsn}"\ndata_dir = "{tmp_path / "var"}"\n'
        '[delivery]\nenabled = false\n[admin]\nlisten = "127.0.0.1:0"\n'
    )
    return path


def _wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"relay exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"relay did not listen on {port}")


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        code, reply = client.data(b"Subject: t\r\n\r\nhi\r\n")
    assert code == 250, reply
    return reply.decode()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


@pytest.mark.slow
def test_serve_with_embedded_postgresql(tmp_path):
    """The quick start: an empty dsn runs a private PostgreSQL under data_dir; SIGTERM exits 0."""
    port = free_port()
    proc = _serve(_write_serve_config(tmp_path, port))
    try:
        _wait_for_port(port, proc, timeout=120)
        reply = _send(port)
    finally:
        err = _stop(proc)
    assert "queued as" in reply
    assert (tmp_path / "var" / "postgresql" / "PG_VERSION").exists()
    assert "intake.accepted" in err


@pytest.mark.slow
async def test_two_relays_start_at_once_on_one_fresh_database(pg_server, tmp_path):
    """Two relays migrating one empty database at once: both come up and both accept mail."""
    dsn = await pg_server.create_database(migrated=False)
    try:
        ports = [free_port(), free_port()]
        procs = [_serve(_write_serve_config(tmp_path, p, dsn, f"c{p}.toml")) for p in ports]
        try:
            for port, proc in zip(ports, procs, strict=True):
                await asyncio.to_thread(_wait_for_port, port, proc)
                await asyncio.to_thread(_send, port)
        finally:
            for proc in procs:
                await asyncio.to_thread(_stop, proc)
        conn = await asyncpg.connect(dsn)
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
            assert [v["version"] for v in versions] == [m.version for m in available_migrations()]
            assert await conn.fetchval("SELECT count(*) FROM messages") == 2
        finally:
            await conn.close()
    finally:
        await pg_server.drop_database(dsn)


async def test_concurrent_migrations_apply_each_file_once(pg_server):
    """Eight connections migrating at once: the advisory lock lets exactly one apply each file."""
    dsn = await pg_server.create_database(migrated=False)
    try:
        conns = [await asyncpg.connect(dsn) for _ in range(8)]
        try:
            applied = await asyncio.gather(*(apply_migrations(c) for c in conns))
        finally:
            for c in conns:
                await c.close()
        total = [m.version for batch in applied for m in batch]
        assert sorted(total) == [m.version for m in available_migrations()]
    finally:
        await pg_server.drop_database(dsn)


def test_migrate_command(pg_server, tmp_path):
    """`bounce-relay migrate` applies the schema to the configured database."""
    dsn = asyncio.run(pg_server.create_database(migrated=False))
    try:
        config = _write_serve_config(tmp_path, 2525, dsn)
        result = run_cli("migrate", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "0001_initial" in result.stdout
    finally:
        asyncio.run(pg_server.drop_database(dsn))


def test_classify_rules_from_config_and_bad_regex_named(tmp_path):
    """A [[classify.rules]] override changes the verdict; a regex that doesn't compile is named."""
    path = tmp_path / "rules.toml"
    path.write_text(
        "[[classify.rules]]\n"
        'name = "example-quota-is-permanent"\n'
        'match = { domain = ["example.org"], text = "quota" }\n'
        'kind = "hard"\n'
        'category = "mailbox_disabled"\n'
        "suppress = true\n"
    )
    hit = run_cli(
        "classify",
        "452 4.2.2 Over quota",
        "--domain",
        "example.org",
        "--json",
        "--config",
        str(path),
    )
    miss = run_cli(
        "classify", "452 4.2.2 Over quota", "--domain", "other.org", "--json", "--config", str(path)
    )
    assert hit.returncode == 0, hit.stderr
    assert '"kind": "hard"' in hit.stdout
    assert '"rule": "example-quota-is-permanent"' in hit.stdout
    assert '"kind": "soft"' in miss.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[retry.rules]]\nname = "broken"\nmatch = { text = "(unclosed" }\n')
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "broken" in result.stderr
    assert "retry.rules[0]" in result.stderr


def test_busy_port_is_a_clear_error(pg_server, tmp_path):
    """A taken listen port: exit 1 with the key and address named, no traceback."""
    dsn = asyncio.run(pg_server.create_database())
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = _write_serve_config(tmp_path, port, dsn)
            result = run_cli("serve", "--config", str(config))
        assert result.returncode == 1
        assert f"smtp.listen 127.0.0.1:{port}: cannot listen" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        asyncio.run(pg_server.drop_database(dsn))


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_listen_overrides_the_configured_address(pg_server, tmp_path, processes):
    """`serve --listen HOST:PORT` listens there for this run, whatever [smtp] listen says (a
    port another process holds here); mail goes through it, also when several processes
    share the port. A taken --listen port is named as --listen, exit 1."""
    dsn = asyncio.run(pg_server.create_database())
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken_port = busy.getsockname()[1]
            config = _write_serve_config(tmp_path, taken_port, dsn)
            text = config.read_text().replace("[smtp]\n", f"[smtp]\nprocesses = {processes}\n")
            config.write_text(text)
            port = free_port()
            serve = [sys.executable, "-m", "relay", "serve", "--config", str(config)]
            proc = subprocess.Popen(
                [*serve, "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _wait_for_port(port, proc)
                reply = _send(port)
            finally:
                _stop(proc)
            assert "queued as" in reply
            taken = run_cli("serve", "--config", str(config), "--listen", f"127.0.0.1:{taken_port}")
        assert taken.returncode == 1
        said = f"bounce-relay: --listen 127.0.0.1:{taken_port}: cannot listen ("
        [line] = [line for line in taken.stderr.splitlines() if line.startswith(said)][:1]
        assert "address already in use" in line.lower()
        assert line.endswith("another process may hold the port: stop it or choose another address")
        assert "Traceback" not in taken.stderr
    finally:
        asyncio.run(pg_server.drop_database(dsn))


def test_serve_listen_is_checked_like_the_config_key(tmp_path):
    """A bad --listen is refused before the config file is even read (there is none here)."""
    for value, why in (
        ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:70000", "must be 0-65535"),
        ("[::1", "use host:port"),
    ):
        result = run_cli("serve", "--listen", value, "--config", str(tmp_path / "none.toml"))
        assert result.returncode == 2
        assert result.stderr.startswith("bounce-relay: serve: argument --listen: bad ")
        assert why in result.stderr and len(result.stderr.splitlines()) == 1


def test_retry_spread_defaults_to_a_tenth_and_rules_inherit_it(write_config):
    from relay.config import load_config

    config = load_config(
        write_config('[[retry.rules]]\nname = "g"\nmatch = { category = ["greylisted"] }\n')
    )
    assert config.rules.retry.default.spread == 0.1
    assert config.rules.retry.rules[-1].spread == 0.1
