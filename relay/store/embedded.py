"""A private PostgreSQL under ``[store] data_dir``, for ``serve`` with an empty dsn.

The ``pgserver`` wheel carries the server binaries; it runs initdb on first
use and starts the server on a Unix socket inside the data directory (no TCP
port). Several relay processes on one data directory share one server;
the last one to stop shuts it down.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.resolve() / "postgresql"
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; return its DSN. Blocking: run it in a thread."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns (at pgserver's import) when XDG_RUNTIME_DIR is unset, as
            # under services and in containers, and falls back to /tmp: what we want anyway.
            warnings.simplefilter("ignore")
            # Late import: only a relay without a dsn needs the server binaries.
            from pgserver import get_server  # type: ignore[attr-defined]

            self._server = get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
