"""How commands print what the relay stored, and where their output files go.

Everything stored was written by someone else (a remote server's reply, a message's
headers, another administrator's reason): every value goes out through ``fmt`` (or
``policies.text.printable``), every JSON document through ``policies.text.terminal_json``,
so no control, bidi or other format character reaches the operator's terminal raw and no
field can add a column or a row to tab-separated output.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO, cast

from policies.text import printable
from relay.cli.common import CommandFailed, UsageError

__all__ = [
    "TerminalCsv",
    "fmt",
    "iso",
    "json_default",
    "open_output",
    "print_fields",
    "print_row",
    "read_lines",
]


def fmt(value: Any, limit: int | None = None) -> str:
    """A value as one field of command output: times to the second, None as empty, text
    through ``printable`` (escaped, one line, cut at ``limit`` characters)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else printable(str(value), limit)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat(timespec="seconds")


def json_default(value: Any) -> str:
    """``json.dumps(default=...)`` for stored rows: times as ISO 8601, the rest as text."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


class TerminalCsv:
    """A text stream for CSV written to a terminal: each ``write`` is one row (the csv
    module writes a row per call), its CRLF kept and everything else escaped, a line break
    inside a quoted cell included. Written to a file or a pipe, CSV is data and keeps its
    bytes; only a terminal needs this."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> int:
        row, end = (text[:-2], "\r\n") if text.endswith("\r\n") else (text, "")
        self.out.write(printable(row) + end)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    @classmethod
    def wrap(cls, out: TextIO) -> TextIO:
        """``out`` itself unless it is a terminal."""
        return cast(TextIO, cls(out)) if out.isatty() else out


@contextlib.contextmanager
def open_output(path: str, mode: str) -> Iterator[IO[Any]]:
    """A file to write ``path`` through (text: UTF-8, no newline translation: CSV writes
    CRLF). It is a temporary file beside ``path`` that replaces it only once the work is
    done: a failed export (the database away, an interrupt) leaves an existing file as it
    was. A place that cannot be written is one line and exit 1, before any work is done."""
    target = Path(path)
    try:
        fd, partial = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise CommandFailed(
            f"cannot write {path}: {exc.strerror or exc}",
            "check that its directory exists and that you may write there",
        ) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as an open() of the path would have made it
        if mode == "wb":
            file: IO[Any] = os.fdopen(fd, "wb")
        else:
            file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        with file:
            yield file
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def print_row(values: Iterable[Any], out: TextIO) -> None:
    """One tab-separated row of command output, every value through ``fmt``."""
    print("\t".join(fmt(value) for value in values), file=out)


def print_fields(record: Any, width: int, out: TextIO) -> None:
    """A store record, one "name value" line per field, in the query's column order."""
    for field in fields(record):
        print(f"{field.name:{width}} {fmt(getattr(record, field.name))}", file=out)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file, line ends kept, without a byte order mark at its
    start; a file that cannot be read is a usage error."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions"
        ) from None
    # A spreadsheet's "CSV UTF-8" starts with a byte order mark: no part of line 1 (the admin
    # page's import skips it too). Stripped here rather than decoded as utf-8-sig, so an
    # error's offset still counts the file's bytes.
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + len(data) - len(body)
        raise UsageError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {at})",
            "save it as UTF-8 and try again",
        ) from None
    # Line ends as a text-mode read gives them (CR LF and CR become LF), as before.
    return text.replace("\r\n", "\n").replace("\r", "\n").splitlines(keepends=True)
