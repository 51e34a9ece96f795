"""`bounce-relay admin user add|remove|list|passwd` against a relay serving in a process of
its own: accounts log in by name, sessions survive a restart of the relay, a new password or
a removal logs the account out at once; the command's errors and its password prompt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from relay.passwords import hash_password
from tests.e2e.relay_process import start, stop, wait_port
from tests.support.admin import browser
from tests.support.cli import free_port, run_cli

SHARED = "shared-password-1"
ALICE, BOB, BOB_NEW = "alice-password-1", "bob-password-1", "bob-password-2"


def _config(tmp_path: Path, dsn: str, smtp_port: int, admin_port: int, shared: str = "") -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[smtp]\nlisten = "127.0.0.1:{smtp_port}"\nhostname = "relay.test"\n'
        f'[store]\ndsn = "{dsn}"\n'
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\npassword_hash = "{shared}"\n'
        "[delivery]\nenabled = false\n"
    )
    return path


def _admin(
    config: Path, *args: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``bounce-relay admin user ARGS --config CONFIG``; ``password`` goes to stdin."""
    stdin_args = ("--password-stdin",) if password is not None else ()
    return run_cli("admin", "user", *args, *stdin_args, "--config", str(config), stdin=password)


class Browser:
    """One person's browser on the admin page: logs in, keeps the cookie, posts forms."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = browser()
        self.csrf = ""

    async def log_in(self, user: str, password: str) -> int:
        async with self.http.get(self.url + "/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert token is not None
        data = {"user": user, "password": password, "csrf": token[1]}
        async with self.http.post(
            self.url + "/login", data=data, headers={"Origin": self.url}
        ) as r:
            page = await r.text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            if r.status == 200 and csrf:
                self.csrf = csrf[1]
            return r.status

    async def page(self, path: str) -> int:
        """200 for a page shown; 303 when the session is gone (sent to /login)."""
        async with self.http.get(self.url + path, allow_redirects=False) as r:
            return r.status

    async def remove(self, address: str) -> int:
        form = {"address": address, "reason": "asked", "confirm": "yes", "csrf": self.csrf}
        async with self.http.post(
            self.url + "/suppression/remove",
            data=form,
            headers={"Origin": self.url},
            allow_redirects=False,
        ) as r:
            return r.status


async def _audit(dsn: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT actor, action, subject FROM admin_audit ORDER BY id")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


@pytest.mark.slow
async def test_accounts_from_the_command_line_on_a_relay_that_restarts(db_dsn, tmp_path):
    """The whole life of two accounts, the relay restarted in the middle: the shared
    password works until the first account; alice (admin) and bob (viewer) log in by name;
    after a restart both are still logged in, alice's CSRF token still good; bob's new
    password logs bob out, alice's removal logs her out; every change is audited."""
    smtp_port, admin_port = free_port(), free_port()
    config = _config(tmp_path, db_dsn, smtp_port, admin_port, hash_password(SHARED))
    url = f"http://127.0.0.1:{admin_port}"
    relay = start(config)
    await wait_port(admin_port, relay)
    alice, bob, shared = Browser(url), Browser(url), Browser(url)
    try:
        listed = _admin(config, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            "name\trole\tcreated_at\tpassword_changed_at\tlast_login_at\tsessions"
        ]
        assert "no accounts yet" in listed.stderr
        assert await shared.log_in("", SHARED) == 200

        added = _admin(config, "add", "alice", "--role", "admin", "--actor", "ops", password=ALICE)
        assert added.returncode == 0, added.stderr
        assert added.stdout == "alice: added, role admin (audited as ops)\n"
        assert "shared [admin] password_hash no longer logs in and its 1 session ended;" in (
            added.stderr
        )
        assert await shared.page("/report") == 303
        assert await shared.log_in("", SHARED) == 401
        added = _admin(config, "add", "bob", "--role", "viewer", "--actor", "ops", password=BOB)
        assert added.returncode == 0, added.stderr

        assert await alice.log_in("alice", ALICE) == 200
        assert await bob.log_in("bob", BOB) == 200
        await stop(relay)
        relay = start(config)
        await wait_port(admin_port, relay)
        assert await alice.page("/report") == 200
        assert await bob.page("/suppression") == 200
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute(
                "INSERT INTO suppressions (address, reason, source) VALUES"
                " ('gone@example.org', 'user_unknown', 'hard_bounce'),"
                " ('kept@example.org', 'user_unknown', 'hard_bounce')"
            )
        finally:
            await conn.close()
        assert await alice.remove("gone@example.org") == 303  # done, back to the list
        assert await bob.remove("kept@example.org") == 403

        listed = _admin(config, "list")
        rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
        assert [(r[0], r[1], r[5]) for r in rows] == [
            ("alice", "admin", "1"),
            ("bob", "viewer", "1"),
        ]
        assert all(r[4] for r in rows)  # last login

        changed = _admin(config, "passwd", "bob", "--actor", "ops", password=BOB_NEW)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == "bob: new password; 1 session ended (audited as ops)\n"
        assert await bob.page("/report") == 303
        assert await bob.log_in("bob", BOB) == 401
        assert await bob.log_in("bob", BOB_NEW) == 200

        removed = _admin(config, "remove", "alice", "--actor", "ops")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == "alice: removed (was admin); 1 session ended (audited as ops)\n"
        assert await alice.page("/report") == 303
        assert await alice.log_in("alice", ALICE) == 401
        assert await bob.page("/report") == 200
    finally:
        for person in (alice, bob, shared):
            await person.http.close()
        if relay.poll() is None:
            await stop(relay)
    assert await _audit(db_dsn) == [
        ("ops", "account.add", "alice"),
        ("ops", "account.add", "bob"),
        ("alice", "suppression.remove", "gone@example.org"),
        ("ops", "account.passwd", "bob"),
        ("ops", "account.remove", "alice"),
    ]


@pytest.fixture
def config(db_dsn, tmp_path) -> Path:
    return _config(tmp_path, db_dsn, free_port(), free_port())


@pytest.fixture
def unreachable(tmp_path) -> Path:
    """A config whose database refuses connections: usage errors come before it."""
    return _config(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", 1, 2)


def _one_line(result: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("bounce-relay: ") and text in line, line


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("add", "alice"), "admin user add needs --role admin or --role viewer"),
        (("add", "--role", "admin"), "admin user add needs a NAME"),
        (("add", "alice", "--role", "root"), "argument --role: invalid choice: 'root'"),
        (("add", "Alice Smith", "--role", "admin"), "'Alice Smith' is not a user name"),
        (("add", "alice", "--role", "admin", "s3cret-pass"), "unrecognized arguments"),
        (("passwd",), "admin user passwd needs a NAME"),
        (("remove", "alice", "--role", "viewer"), "--role goes with add"),
        (("remove", "alice", "--password-stdin"), "--password-stdin goes with add and passwd"),
        (("list", "alice"), "admin user list takes no NAME"),
        (("rename", "alice"), "argument ACTION: invalid choice: 'rename'"),
    ],
)
def test_usage_errors_are_one_line_exit_2_before_the_database(unreachable, args, text):
    """A password is never taken from the command line: an extra word is refused."""
    _one_line(run_cli("admin", "user", *args, "--config", str(unreachable)), 2, text)


def test_failures_are_one_line_exit_1_and_change_nothing(config):
    assert _admin(config, "add", "alice", "--role", "viewer", password=ALICE).returncode == 0
    cases = [
        (("add", "alice", "--role", "admin"), ALICE, "account alice exists already"),
        (("add", "carol", "--role", "admin"), "", "empty password refused"),
        (("add", "carol", "--role", "admin"), "short", "a password of 5 characters is too short"),
        (("passwd", "carol"), ALICE, "no account carol"),
        (("passwd", "alice"), "\n", "empty password refused"),
    ]
    for args, password, text in cases:
        _one_line(_admin(config, *args, password=password), 1, text)
    _one_line(_admin(config, "remove", "carol"), 1, "no account carol")
    listed = _admin(config, "list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed[1:]] == [["alice", "viewer"]]


def test_names_are_kept_in_lower_case(config):
    assert (
        _admin(config, "add", "Ops.Team@Example", "--role", "viewer", password=BOB).returncode == 0
    )
    listed = _admin(config, "list").stdout.splitlines()
    assert listed[1].startswith("ops.team@example\tviewer\t")
    assert _admin(config, "remove", "OPS.TEAM@example").returncode == 0


def test_removing_the_last_account_says_who_can_log_in_now(config):
    assert _admin(config, "add", "alice", "--role", "admin", password=ALICE).returncode == 0
    removed = _admin(config, "remove", "alice")
    assert removed.returncode == 0, removed.stderr
    assert "no accounts left: nobody can log in to the admin page" in removed.stderr


# -- the password prompt ---------------------------------------------------------------------

# The child takes the pseudo-terminal as its controlling terminal (getpass reads /dev/tty),
# then becomes `python -m relay admin user ...` in the same process.
_ON_ITS_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'relay', *sys.argv[1:]])"
)


def _at_the_prompt(args: tuple[str, ...], *answers: bytes) -> subprocess.CompletedProcess[str]:
    """The command on a terminal of its own: each answer is typed at the next prompt."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ON_ITS_TERMINAL, *args],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    os.close(follower)
    seen = bytearray()
    try:
        for prompt, answer in zip((b"Password: ", b"Again: "), answers, strict=False):
            deadline = time.monotonic() + 60
            while prompt not in seen:
                assert time.monotonic() < deadline, f"no {prompt!r} on the terminal: {seen!r}"
                seen += os.read(leader, 1024)
            del seen[: seen.index(prompt) + len(prompt)]
            os.write(leader, answer)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


async def test_add_and_passwd_ask_the_password_twice_on_the_terminal(config, db_dsn):
    """Typed twice, not echoed: two different answers change nothing (exit 1); the same
    twice is the account's password, and a login with it works."""
    add = ("admin", "user", "add", "alice", "--role", "admin", "--config", str(config))
    differ = _at_the_prompt(add, b"alice-one-pass\n", b"alice-two-pass\n")
    _one_line(differ, 1, "the two passwords differ")
    added = _at_the_prompt(add, b"alice-one-pass\n", b"alice-one-pass\n")
    assert added.returncode == 0, added.stderr
    assert "alice-one-pass" not in added.stdout + added.stderr
    passwd = ("admin", "user", "passwd", "alice", "--config", str(config))
    interrupted = _at_the_prompt(passwd, b"\x03")
    _one_line(interrupted, 130, "interrupted at the password prompt; nothing was changed")
    conn = await asyncpg.connect(db_dsn)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM admin_accounts")
    finally:
        await conn.close()
    from relay.passwords import verify_password

    assert verify_password("alice-one-pass", stored)
    assert not verify_password("alice-two-pass", stored)


def test_an_unknown_account_is_refused_before_the_password_is_asked(config):
    """passwd for nobody: refused at once. (Asked first, the password would meet the end of
    stdin: "no password given".)"""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "admin",
            "user",
            "passwd",
            "nobody",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
        start_new_session=True,  # no terminal to ask on
    )
    _one_line(result, 1, "no account nobody")
