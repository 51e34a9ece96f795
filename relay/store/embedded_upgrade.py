"""``bounce-relay embedded upgrade``: the embedded cluster of a ``[store] data_dir`` moved
from an older PostgreSQL major version (pgserver's 16) to the one ``relay.store.embedded``
runs now.

A major version cannot open another's files, so the old cluster is dumped by the new
pg_dumpall from the old server (as PostgreSQL advises), restored into a new cluster made
beside it (``postgresql.upgrading``), and the two directories are swapped. The old cluster
and the dump (readable by its owner only) are kept as ``postgresql-16/`` and
``postgresql-16.sql``; nothing in the old cluster changes. It runs under the data
directory's lock, and refuses while any process (a relay of this version, or an old one in
pgserver's own list) still uses the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from relay.errors import EmbeddedServerFailed
from relay.store.embedded import (
    SUPERUSER,
    Binaries,
    Cluster,
    cluster_major,
    engine_binaries,
    live_holders,
    locked,
    read_holders,
    server_account,
)

__all__ = ["Upgraded", "upgrade_cluster"]

log = structlog.get_logger("relay.store.embedded")  # the server's logger: one subsystem


@dataclass(frozen=True)
class Upgraded:
    """What ``upgrade_cluster`` did: the old cluster and its dump are kept beside the new one."""

    old_major: int
    new_major: int
    kept: Path
    dump: Path


def upgrade_cluster(data_dir: Path, old: Binaries) -> Upgraded:
    """Move the embedded cluster of ``data_dir`` from ``old``'s PostgreSQL to this one: dump it
    with pg_dumpall, restore the dump into a new cluster, then swap the two directories.
    Nothing changes in the old cluster; no relay may use it meanwhile."""
    new = engine_binaries()
    pgdata = data_dir.resolve() / "postgresql"
    with locked(pgdata.parent / "postgresql.lock"):
        found = cluster_major(pgdata)
        if found is None or found == new.major:
            raise EmbeddedServerFailed(f"{pgdata} holds no cluster of another version")
        if found != old.major:
            raise EmbeddedServerFailed(
                f"{pgdata} was made by PostgreSQL {found}, but {old.package} carries "
                f"PostgreSQL {old.major}; install a {old.package} that carries {found}"
            )
        holders = read_holders(pgdata.parent / "postgresql.holders")
        users = live_holders(holders) + _pgserver_holders(pgdata)
        if users:
            pids = ", ".join(sorted({u.split(":")[0] for u in users}))
            raise EmbeddedServerFailed(
                f"processes {pids} still use {pgdata}; stop every relay using it, then run "
                "this again"
            )
        kept = pgdata.with_name(f"postgresql-{found}")
        dump = pgdata.with_name(f"postgresql-{found}.sql")
        staging = pgdata.with_name("postgresql.upgrading")
        for path in (kept, dump):
            if path.exists():
                raise EmbeddedServerFailed(
                    f"{path} exists (from an earlier upgrade?); move it away and run this again"
                )
        shutil.rmtree(staging, ignore_errors=True)  # left by an attempt that failed
        source = Cluster(pgdata, old, server_account(pgdata))
        target = Cluster(staging, new, server_account(staging))
        if source.running():  # nobody holds it: a server orphaned by a crash
            source.stop()
        target.initdb()
        try:
            _copy(source, target, dump)
        except BaseException:
            dump.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pgdata.rename(kept)
        staging.rename(pgdata)
    log.info("store.embedded_upgraded", old=found, new=new.major, kept=str(kept), dump=str(dump))
    return Upgraded(found, new.major, kept, dump)


def _copy(source: Cluster, target: Cluster, dump: Path) -> None:
    raw = dump.with_name(f"{dump.name}.raw")
    source.start()
    try:
        target.start()
        try:
            # The newer pg_dumpall reads the older server, as PostgreSQL advises.
            raw.unlink(missing_ok=True)  # left by an attempt that was killed
            _private(raw)
            target.client("pg_dumpall", source, "--file", str(raw))
            _without_superuser(raw, dump)
            restore = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", str(dump)]
            target.client("psql", target, *restore)
        finally:
            raw.unlink(missing_ok=True)
            target.stop()
    finally:
        source.stop()


def _private(path: Path) -> None:
    """Create ``path`` readable by its owner only: a dump holds the queue and the
    suppression list."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _without_superuser(raw: Path, dump: Path) -> None:
    """Copy the dump but its ``CREATE ROLE postgres``: initdb made that role already, and
    the error would stop the restore. The ALTER ROLE after it still sets its attributes."""
    _private(dump)
    skip = f"CREATE ROLE {SUPERUSER};\n"
    with raw.open(encoding="utf-8") as source, dump.open("w", encoding="utf-8") as target:
        target.writelines(line for line in source if line != skip)


def _pgserver_holders(pgdata: Path) -> list[str]:
    """Live processes in pgserver's own list: an old relay still running on the cluster."""
    try:
        pids = json.loads((pgdata / ".handle_pids.json").read_text())
    except FileNotFoundError:
        return []
    return live_holders(str(pid) for pid in pids)
