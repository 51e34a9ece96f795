"""bounce-relay's exception tree.

    RelayError
    ├── ConfigError          one bad key in config.toml (key, line, why)
    │   └── ConfigErrors     every ConfigError found in one file, reported at once
    ├── ListenError          a listener could not bind (port taken, address not local)
    └── StoreError           anything the store could not do
        ├── StoreUnavailable the database is unreachable or the commit failed:
        │                    intake answers 451 4.3.0 and the client keeps the message
        └── UnsafeDatabase   fsync/synchronous_commit off: a 250 would not be durable

Driver errors stay in ``__cause__``; callers never match on asyncpg types.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "ListenError",
    "RelayError",
    "StoreError",
    "StoreUnavailable",
    "UnsafeDatabase",
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


class StoreError(RelayError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database is unreachable or refused the commit; nothing was written."""


class UnsafeDatabase(StoreError):
    """The database would acknowledge commits it has not made durable."""
