"""The suppression list as files: the entries under the page's filter downloaded as CSV
(/suppression.csv), and a CSV file imported from the page (/suppression/import): the
CLI's ``suppression export`` and ``suppression import``.

The CSV written is the CLI's, column for column (address, reason, source, created_at), with
the same defence against spreadsheet formulas (``relay.reports.export.neutralise``). A file
imported is read as the CLI reads one (``policies.suppression_file``), off the event loop: bad
lines are reported by number and the good ones imported. Its route takes a body of up to
the page's ``IMPORT_MAX_BYTES`` (aiohttp's limit elsewhere is 1 MiB), and a larger one gets
a page that says so."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import tempfile
from datetime import UTC
from typing import IO

from aiohttp import web

from policies.suppression_file import SuppressionFile, read_suppression_csv
from relay.reports.export import neutralise
from relay.store import SuppressionFilter
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.shell import (
    FORM,
    Guard,
    Handler,
    PageContext,
    Pages,
    actor,
    back_to,
    error_notice,
    success_notice,
    whole_page,
)
from relay.web.pages.suppression import (
    IMPORT_MAX_BYTES,
    MAX_REASON,
    TITLE,
    Refused,
    checked_listing,
    refused_listing,
)

__all__ = ["add_routes"]

BAD_LINES_SHOWN = 20
_FORM_SLACK = 64 * 1024  # the import form's other fields and multipart framing
_CSV_COLUMNS = ["address", "reason", "source", "created_at"]  # `suppression export`'s
_CHUNK = 1 << 16


class _Unreadable(ValueError):
    """An uploaded file that cannot be read as CSV text; the text says why."""


class _TooLarge(_Unreadable):
    """An uploaded file over IMPORT_MAX_BYTES."""


class SuppressionFilePages(Pages):
    """/suppression.csv, /suppression/import."""

    async def suppression_csv(self, request: web.Request) -> web.StreamResponse:
        """The entries under the page's filter as CSV (the CLI's columns), all of them: written
        to a temporary file as the cursor reads them, then sent, so the read-only transaction
        lasts as long as the query, not as long as the slowest download."""
        try:
            listing = checked_listing(request.query)
        except Refused as exc:
            return refused_listing(request, str(exc))
        with tempfile.TemporaryFile() as spool:
            await self._write_csv(listing.store_filter(), spool)
            size = spool.tell()
            spool.seek(0)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/csv; charset=utf-8",
                    "Content-Disposition": 'attachment; filename="suppressions.csv"',
                }
            )
            response.content_length = size
            await response.prepare(request)
            while chunk := spool.read(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _write_csv(self, flt: SuppressionFilter, out: IO[bytes]) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")
        writer.writerow(_CSV_COLUMNS)
        async for row in self.store.iter_suppressions(flt):
            writer.writerow(
                [
                    neutralise(row.address),
                    neutralise(row.reason),
                    row.source,
                    row.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                ]
            )
            if text.tell() >= _CHUNK:
                out.write(text.getvalue().encode("utf-8"))
                text.seek(0)
                text.truncate()
        out.write(text.getvalue().encode("utf-8"))

    async def suppression_import(self, request: web.Request) -> web.StreamResponse:
        """Import the uploaded CSV file: the good lines added, the bad ones listed by number."""
        form = request[FORM]
        upload = form.get("file")
        reason = str(form.get("reason", "")).strip()
        if not isinstance(upload, web.FileField) or not upload.filename:
            raise back_to("/suppression", problem="Nothing imported: choose a CSV file.")
        if not reason or len(reason) > MAX_REASON:
            raise back_to(
                "/suppression",
                problem=f"Nothing imported: give a reason (at most {MAX_REASON:,} characters).",
            )
        try:
            parsed = await asyncio.to_thread(_read_upload, upload.file, reason)
        except _TooLarge:
            return _too_large(request)
        except _Unreadable as exc:
            raise back_to("/suppression", problem=f"Nothing imported: {exc}") from None
        if not parsed.entries and not parsed.errors:
            raise back_to("/suppression", problem="Nothing imported: the file holds no address.")
        name = upload.filename[:200]
        added = 0
        if parsed.entries:  # as the CLI: no valid line, nothing to audit
            added = await self.store.import_suppressions(
                parsed.entries, actor(request), name, why=reason
            )
        return whole_page(request, f"{TITLE}: import", _import_report(name, parsed, added))


def _read_upload(file: IO[bytes], reason: str) -> SuppressionFile:
    """The uploaded file read as ``suppression import`` reads one (in a worker thread: a
    10 MB file takes a while; the work is linear in its size)."""
    data = file.read(IMPORT_MAX_BYTES + 1)
    if len(data) > IMPORT_MAX_BYTES:
        raise _TooLarge
    # A spreadsheet's "CSV UTF-8" starts with a byte order mark: no part of line 1 (the CLI's
    # read_lines skips it too). Stripped here rather than decoded as utf-8-sig, so an error's
    # offset still counts the file's bytes.
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + len(data) - len(body)
        raise _Unreadable(
            f"the file is not UTF-8 text ({exc.reason} at byte {at:,}); save it as "
            "UTF-8 CSV and try again."
        ) from None
    return read_suppression_csv(text.splitlines(keepends=True), reason)


def _import_report(name: str, parsed: SuppressionFile, added: int) -> Markup:
    """What an import did: counts as the CLI prints them, then the first bad lines."""
    counts = (
        f"{name}: {added:,} added, {len(parsed.entries) - added:,} already listed, "
        f"{parsed.duplicates:,} duplicate lines, {len(parsed.errors):,} bad lines."
    )
    parts: list[Content] = [success_notice(counts) if parsed.entries else error_notice(counts)]
    if parsed.errors:
        parts.append(
            error_notice(
                f"{_plural_lines(len(parsed.errors))} not imported: fix them and import the "
                "file again (what was imported stays as it is)."
            )
        )
        shown = parsed.errors[:BAD_LINES_SHOWN]
        more = len(parsed.errors) - len(shown)
        parts.append(
            table(
                ["line", "what is wrong"],
                [[number, why if len(why) <= 200 else why[:200] + "..."] for number, why in shown],
                numeric={0},
                caption=f"The first {len(shown)}; {more:,} more" if more else None,
            )
        )
    parts.append(element("p", link("/suppression", "Back to the suppression list")))
    return concat(*parts)


def _plural_lines(n: int) -> str:
    return "1 line was" if n == 1 else f"{n:,} lines were"


def _too_large(request: web.Request) -> web.Response:
    why = (
        f"Nothing imported: the file is larger than {IMPORT_MAX_BYTES // (1024 * 1024)} MB. "
        "Split it and import each part."
    )
    body = concat(error_notice(why), element("p", link("/suppression", "Back")))
    return whole_page(request, f"{TITLE}: import", body, status=413)


def _larger_upload(handler: Handler) -> Handler:
    """The import's route may take a body of IMPORT_MAX_BYTES (the application's limit is
    aiohttp's 1 MiB); a larger one is refused with a page that says so."""

    async def bounded(request: web.Request) -> web.StreamResponse:
        larger = request.clone(client_max_size=IMPORT_MAX_BYTES + _FORM_SLACK)
        try:
            response = await handler(larger)
        except web.HTTPRequestEntityTooLarge:
            return _too_large(larger)  # aiohttp closed the file it was spooling
        except BaseException:
            await _close_uploads(larger)
            raise
        await _close_uploads(larger)
        return response

    return bounded


async def _close_uploads(request: web.Request) -> None:
    """Close the temporary files aiohttp spooled the uploaded files into, whoever read the
    form (the import, or a guard that refused it): aiohttp leaves them to the garbage
    collector."""
    if not request.body_exists or request.can_read_body:
        return  # the body was not read: nothing was spooled
    try:
        form = await request.post()  # read already: aiohttp keeps what it parsed
    except (ValueError, web.HTTPException):
        return  # a body aiohttp refused to parse: nothing of it kept
    for value in form.values():
        if isinstance(value, web.FileField):
            value.file.close()


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = SuppressionFilePages(ctx)
    app.router.add_get("/suppression.csv", guarded(pages.suppression_csv))
    app.router.add_post(
        "/suppression/import",
        _larger_upload(same_origin_only(guarded(pages.suppression_import))),
    )
