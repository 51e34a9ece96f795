"""The bounces report over HTTP: the admin page's downloads and the JSON API send it here.

The report is written by ``relay.reports.export.export`` (the CLI's writer) into a
temporary file, then sent from it with its length. Spooled, not streamed to the client as
rows arrive: the report's read-only transaction (a pooled connection, and a snapshot that
holds back vacuum of the busy queue tables) then lasts as long as the query, not as long
as the slowest client's download, and a query that fails is a clean 500 rather than a
truncated 200. The file costs disk, not memory: a million rows never sit in memory.
"""

from __future__ import annotations

import os
import tempfile

from aiohttp import web

from relay.reports import export as report
from relay.store import Store

__all__ = ["CONTENT_TYPES", "send_report"]

CONTENT_TYPES: dict[report.Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "json": "application/json; charset=utf-8",
}
_CHUNK = 1 << 16


async def send_report(
    request: web.Request, store: Store, flt: report.ReportFilter, fmt: report.Format
) -> web.StreamResponse:
    """The report under ``flt`` as ``fmt`` (csv, xlsx: an attachment; json: the body)."""
    with tempfile.TemporaryFile() as spool:
        await report.export(store, flt, fmt, spool)
        size = spool.seek(0, os.SEEK_END)  # (the zip of an XLSX may have moved back and forth)
        spool.seek(0)
        headers = {"Content-Type": CONTENT_TYPES[fmt]}
        if fmt != "json":
            headers["Content-Disposition"] = f'attachment; filename="bounces.{fmt}"'
        response = web.StreamResponse(headers=headers)
        response.content_length = size
        await response.prepare(request)
        while chunk := spool.read(_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    return response
