"""`bounce-relay` as a new user meets it: --help, defaults, the password prompt, errors.

Every test runs the real command in a subprocess (`python -m relay`, what the
`bounce-relay` entry point runs).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import REPO, free_port, run_cli

CONFIG = ("--config", str(REPO / "config.toml"))


def _summary(help_text: str) -> list[str]:
    """The command paths of the top-level --help's command summary ("queue list", ...)."""
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    paths = []
    for line in section.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a wrapped help text
        usage = re.split(r"\s{2,}", line.strip())[0]
        paths.append(" ".join(w for w in usage.split() if re.fullmatch(r"[a-z][a-z-]*", w)))
    return paths


def _choices(text: str) -> list[str]:
    """The choices argparse lists in an "invalid choice" error."""
    listed = re.search(r"\(choose from (.*)\)", text)
    assert listed, text
    return re.findall(r"'([^']+)'", listed[1])


def _helps(paths: list[str]) -> dict[str, str]:
    """`bounce-relay PATH --help` for each path, run side by side."""

    def one(path: str) -> str:
        result = run_cli(*path.split(), "--help")
        assert result.returncode == 0, (path, result.stderr)
        return result.stdout

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


def _without_help(help_text: str) -> list[str]:
    """The options and positionals of a command's --help that have no help text: an
    argparse entry is "  INVOCATION  help", or "  INVOCATION" with its help on the next,
    further indented, line."""
    missing = []
    lines = help_text.splitlines()
    in_section = False
    for i, line in enumerate(lines):
        if line in ("options:", "positional arguments:"):
            in_section = True
            continue
        if not line.strip():
            in_section = False
            continue
        if not in_section or line.startswith("   ") or not line.startswith("  "):
            continue
        entry = re.match(r"^  (\S(?:.*?\S)?)(?:\s{2,}(\S.*))?$", line)
        assert entry, line
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        if entry[2] is None and not follows.startswith("    "):
            missing.append(entry[1])
    return missing


def test_top_level_help_is_clean_and_lists_every_command_and_action():
    """`bounce-relay --help`: a plain description (no RST left over from a docstring) and a
    summary with every command and every action registered, demo and report included."""
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    assert "``" not in top.stdout
    assert "The ``bounce-relay`` command" not in top.stdout
    assert "An SMTP relay that reads every upstream reply" in top.stdout
    listed = _summary(top.stdout)
    for expected in (
        "demo",
        "report",
        "suppression remove",
        "suppression import",
        "suppression export",
        "suppression audit",
        "hash-password",
        "classify",
    ):
        assert expected in listed, (expected, listed)
    # What the parser really accepts, asked of the parser itself: every command, and every
    # action of each, is in the summary, and nothing else is.
    commands = _choices(run_cli("no-such-command").stderr)
    registered = []
    for command in commands:
        actions = run_cli(command, "no-such-action", *CONFIG)
        if "invalid choice" in actions.stderr:
            registered += [f"{command} {action}" for action in _choices(actions.stderr)]
        else:
            registered.append(command)
    assert sorted(listed) == sorted(registered)
    assert len(registered) >= 26


def test_every_option_has_help_and_only_real_defaults_are_shown():
    """No "(default: None)"; every option and positional has a help text; where a default
    matters it is the real one."""
    listed = _summary(run_cli("--help").stdout)
    helps = _helps(listed)
    for path, text in helps.items():
        assert "default: None" not in text, path
        assert "(default: )" not in text, path
        assert _without_help(text) == [], path
    report = helps["report"]
    for default in (
        "(default: soft)",
        "(default: from-domain)",
        "(default: UTC)",
        "(default: table on a terminal, else csv)",
        "{table,csv,xlsx,json}",
    ):
        assert default in " ".join(report.split()), default
    assert "(default: 100)" in helps["queue list"]
    assert "(default: 100)" in helps["suppression list"]
    assert "(default: 50)" in helps["incidents list"]
    assert "(default: 50)" in helps["suppression audit"]
    assert "(default: 7d)" in " ".join(helps["classify"].split())
    assert "(default: imported)" in helps["suppression import"]
    # A flag has no default to show.
    assert not re.search(r"--json\s+print one JSON document \(default", helps["suppression why"])


def test_demo_and_hash_password_offer_no_config():
    """They read no config file: their help does not offer --config, and a --config given
    anyway is refused instead of ignored. The commands that read one offer it."""
    for command in ("demo", "hash-password"):
        shown = run_cli(command, "--help")
        assert "--config" not in shown.stdout, command
        for args in ((command, "--config", "x.toml"), ("--config", "x.toml", command)):
            refused = run_cli(*args)
            assert refused.returncode == 2, args
            assert (
                refused.stderr == f"bounce-relay: {command} reads no config file; drop --config\n"
            )
    assert "--config PATH" in run_cli("queue", "list", "--help").stdout
    # Before the command, --config still works for a command that reads one.
    assert run_cli("--config", str(REPO / "config.toml"), "check-config").returncode == 0


# -- the password prompt ---------------------------------------------------------------------

# The child takes the pseudo-terminal as its controlling terminal (getpass reads /dev/tty),
# then becomes `python -m relay hash-password` in the same process.
_ON_ITS_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'relay', 'hash-password'])"
)


def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} on the terminal: {bytes(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 1024)


def _at_the_prompt(*answers: bytes) -> subprocess.CompletedProcess[str]:
    """hash-password on a terminal of its own: each answer is typed at the next prompt."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _ON_ITS_TERMINAL],
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
            _read_until(leader, prompt, seen)
            os.write(leader, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("answers", "status", "message"),
    [
        ((b"\x04",), 1, "bounce-relay: no password given (end of input); type one"),
        ((b"\x03",), 130, "bounce-relay: interrupted at the password prompt; nothing was hashed"),
        ((b"one\n", b"two\n"), 1, "bounce-relay: the two passwords differ; run it again"),
    ],
    ids=["ctrl-d", "ctrl-c", "mismatch"],
)
def test_hash_password_prompt_ends_in_one_line(answers, status, message):
    """Ctrl-D, Ctrl-C or a confirmation that differs: one line on stderr, no traceback."""
    result = _at_the_prompt(*answers)
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_hash_password_prompt_asks_twice_and_prints_a_hash_that_verifies():
    from relay.passwords import verify_password

    result = _at_the_prompt(b"s3cret pass\n", b"s3cret pass\n")
    assert result.returncode == 0, result.stderr
    assert verify_password("s3cret pass", result.stdout.strip())
    assert not verify_password("s3cret", result.stdout.strip())


# -- errors ----------------------------------------------------------------------------------


@pytest.fixture
def unreachable_db(tmp_path: Path) -> str:
    """A config whose database refuses connections (nothing listens on its port)."""
    path = tmp_path / "unreachable.toml"
    path.write_text(f'[store]\ndsn = "postgresql://postgres@127.0.0.1:{free_port()}/postgres"\n')
    return str(path)


def _one_line(result: subprocess.CompletedProcess[str], status: int, *shown: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("bounce-relay: ") and "; " in line, line
    for text in shown:
        assert text in line, line


def test_database_unreachable_is_one_line_saying_where_to_look(unreachable_db):
    for args in (("queue", "list"), ("suppression", "why", "a@example.org"), ("migrate",)):
        result = run_cli(*args, "--config", unreachable_db)
        _one_line(result, 1, "database unreachable", f"check [store] dsn in {unreachable_db}")


def test_files_that_cannot_be_read_or_written(unreachable_db, tmp_path):
    """A file named on the command line is tried before the database (unreachable here)."""
    missing = tmp_path / "nowhere" / "x.csv"
    cases = [
        (("report", "--format", "csv", "-o", str(missing)), 1, f"cannot write {missing}"),
        (("suppression", "export", "-o", str(missing)), 1, f"cannot write {missing}"),
        (("suppression", "import", str(missing)), 2, f"cannot read {missing}"),
        (("check-config", "--config", str(missing)), 2, f"config file {missing} not found"),
        (("classify", "550 5.1.1 x", "--rules", str(missing)), 2, "--rules"),
    ]
    for args, status, message in cases:
        config = () if "--config" in args else ("--config", unreachable_db)
        _one_line(run_cli(*args, *config), status, message)
    assert not missing.parent.exists()


def test_a_failed_export_leaves_the_existing_file_as_it_was(unreachable_db, tmp_path):
    """-o writes beside the file and replaces it only when the export is done."""
    for args in (("report", "--format", "csv"), ("suppression", "export")):
        kept = tmp_path / "last-week.csv"
        kept.write_bytes(b"address,reason\r\nkept@example.org,manual\r\n")
        _one_line(run_cli(*args, "-o", str(kept), "--config", unreachable_db), 1, "unreachable")
        assert kept.read_bytes() == b"address,reason\r\nkept@example.org,manual\r\n"
        assert not list(tmp_path.glob("*.partial"))  # no partial file left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("queue", "purge", "3"), "queue purge: the following arguments are required: --reason"),
        (("queue", "show", "three"), "'three' is not a whole number"),
        (("suppression", "add", "not-an-address", "--reason", "x"), "malformed address"),
        (("profile", "show", "a@"), "malformed address"),
        (("suppression", "list", "--limit", "0"), "0 is not positive"),
        (("report", "--format", "yaml"), "invalid choice: 'yaml'"),
        (("classify",), "classify needs a REPLY argument or --jsonl"),
        (("classify", "550 x", "--since", "1d"), "--since goes with --replay"),
        (("serve", "--listen", "localhost"), "the port is missing"),
        (("queue", "list", "--bogus"), "queue list: unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, message, unreachable_db):
    """Bad usage is refused before the config's database is reached (it is unreachable)."""
    _one_line(run_cli(*args, "--config", unreachable_db) if args else run_cli(), 2, message)
