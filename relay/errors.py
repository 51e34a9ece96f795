"""bounce-relay's exception tree.

    RelayError
    ├── ConfigError          one bad key in config.toml (key, line, why)
    │   └── ConfigErrors     every ConfigError found in one file, reported at once
    ├── ListenError          a listener could not bind (port taken, address not local)
    ├── EmbeddedServerFailed the embedded PostgreSQL could not be set up, started, stopped
    │                        or upgraded (relay.store.embedded, embedded_upgrade)
    ├── EmbeddedVersionMismatch  the embedded data directory holds a cluster of another
    │                        PostgreSQL major version (pgdata, found, ours): names the upgrade
    └── StoreError           anything the store could not do
        ├── StoreUnavailable the database is unreachable or the commit failed:
        │                    intake answers 451 4.3.0 and the client keeps the message
        └── UnsafeDatabase   fsync/synchronous_commit off: a 250 would not be durable

Driver errors stay in ``__cause__``; callers never match on asyncpg types.

``describe`` turns a failure outside the relay (a connection, TLS, DNS) into the short text
the synthetic replies and logs quote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "EmbeddedServerFailed",
    "EmbeddedVersionMismatch",
    "ListenError",
    "RelayError",
    "StoreError",
    "StoreUnavailable",
    "UnsafeDatabase",
    "describe",
]


class RelayError(Exception):
    """Base class of every error bounce-relay raises on purpose."""


class ConfigError(RelayError):
    """A config key is unknown, missing or has a bad value."""

    def __init__(self, key: str, why: str, line: int | None = None) -> None:
        self.key = key
        self.why = why
        self.line = line
        where = f" (line {line})" if line else ""
        super().__init__(f"{key}{where}: {why}")


class ConfigErrors(ConfigError):
    """Several config errors; ``errors`` holds each one."""

    def __init__(self, source: str, errors: list[ConfigError]) -> None:
        self.errors = errors
        self.source = source
        RelayError.__init__(
            self, f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors)
        )
        self.key = errors[0].key if errors else ""
        self.why = errors[0].why if errors else ""
        self.line = errors[0].line if errors else None


class ListenError(RelayError):
    """A listener could not bind; the message names the config key and the address."""

    def __init__(self, key: str, address: tuple[str, int], exc: OSError) -> None:
        self.key = key
        super().__init__(
            f"{key} {address[0]}:{address[1]}: cannot listen ({exc.strerror or exc}); "
            "another process may hold the port: stop it or choose another address"
        )


class EmbeddedServerFailed(RelayError):
    """The embedded PostgreSQL could not be set up, started, stopped or upgraded."""


class EmbeddedVersionMismatch(RelayError):
    """The data directory holds a cluster of another PostgreSQL major version; the message
    names what to do (``bounce-relay embedded upgrade`` moves an older one)."""

    def __init__(self, pgdata: Path, found: int, ours: int) -> None:
        self.pgdata = pgdata
        self.found = found
        self.ours = ours
        if found < ours:
            todo = (
                "stop every relay using it and run `bounce-relay embedded upgrade` with the "
                "same --config (it dumps the old database and restores it into PostgreSQL "
                f"{ours}; it needs the old server binaries: pip install pgserver), or point "
                "[store] dsn at a PostgreSQL server"
            )
        else:
            todo = (
                f"run it with the bounce-relay that made it, or point [store] dsn at a "
                f"PostgreSQL {found} server"
            )
        super().__init__(
            f"the embedded database {pgdata} was made by PostgreSQL {found} and this "
            f"relay's embedded server is PostgreSQL {ours}, which cannot open it; {todo}"
        )


class StoreError(RelayError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database is unreachable or refused the commit; nothing was written."""


class UnsafeDatabase(StoreError):
    """The database would acknowledge commits it has not made durable."""


def describe(exc: BaseException) -> str:
    """A short, stable description of a failure outside the relay (a connection, a TLS
    handshake, a DNS lookup): what an operator greps for, not a traceback. The first
    cause that says more than its wrapper wins (a refused connection, a timeout, an OS
    error's text)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "Connection refused"
        if isinstance(err, TimeoutError):  # aiosmtplib's SMTPTimeoutError is one too
            return "timed out"
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
