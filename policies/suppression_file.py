"""Reading a suppression import file: ``address[,reason]`` per line, CSV quoting allowed.

Bad lines are reported with their line numbers and the good ones kept, so an
operator fixes the few and re-runs the import (it is idempotent downstream).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from policies.addresses import AddressError, normalise_address, validate_address

__all__ = ["SuppressionFile", "read_suppression_csv"]

_HEADERS = {"address", "email", "e-mail", "recipient"}


@dataclass
class SuppressionFile:
    entries: list[tuple[str, str]] = field(default_factory=list)  # (normalised address, reason)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, what is wrong)
    duplicates: int = 0


def read_suppression_csv(lines: Iterable[str], default_reason: str) -> SuppressionFile:
    """Parse the file's lines; blank lines and ``#`` comments are skipped, a header row too."""
    result = SuppressionFile()
    seen: set[str] = set()
    for number, row in _rows(lines):
        if isinstance(row, str):
            result.errors.append((number, row))
            continue
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if number == 1 and row[0].strip().lower() in _HEADERS:
            continue
        if len(row) > 2:
            result.errors.append((number, f"expected address[,reason], got {len(row)} fields"))
            continue
        raw = row[0].strip()
        try:
            validate_address(raw)
        except AddressError as exc:
            result.errors.append((number, str(exc)))
            continue
        key = normalise_address(raw)
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        reason = row[1].strip() if len(row) == 2 and row[1].strip() else default_reason
        result.entries.append((key, reason))
    return result


def _rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, fields) per record, or (line number, why) for one the csv module refuses
    (a stray line break inside a field): that line is reported and the rest still read."""
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, f"not a CSV line: {exc}"
            continue
        yield reader.line_num, row
