"""The JSON API for platforms that pull reports and manage suppressions programmatically.

    GET    /api/v1/reports/bounces?from=&to=&tz=&campaign=&group_by=from_domain|ip
                                   &type=soft|hard|all&top=&format=json|csv|xlsx
    GET    /api/v1/suppression/{address}
    DELETE /api/v1/suppression/{address}?reason=...     (the reason is required)

Every call needs ``Authorization: Bearer <token>``; tokens are ``[[admin.tokens]]``
(a name and the scrypt hash of the token), and the audit log names the token that
removed an address (``token:<name>``). Reports reuse the CLI's filter checks and
writers, so the API returns the same rows and the same CSV/XLSX bytes.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from datetime import datetime
from typing import Any

from aiohttp import web

from policies.addresses import AddressError, normalise_address, validate_address
from relay import report
from relay.clock import Clock, utc_now
from relay.config import AdminToken
from relay.passwords import verify_password
from relay.store import Store

__all__ = ["add_api_routes"]

_GROUPS = {"from_domain": "from-domain", "ip": "ip"}


class _Tokens:
    """Bearer-token check; a verified token is cached by digest (scrypt is slow on purpose)."""

    def __init__(self, tokens: tuple[AdminToken, ...]) -> None:
        self.tokens = tokens
        self._verified: dict[bytes, str] = {}

    def name_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :].strip()
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._verified:
            return self._verified[digest]
        for candidate in self.tokens:
            if candidate.hash and verify_password(token, candidate.hash):
                self._verified[digest] = candidate.name
                return candidate.name
        return None


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "missing or wrong bearer token"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="bounce-relay"'},
    )


def _bad_request(why: str) -> web.Response:
    return web.json_response({"error": why}, status=400)


def _iso(value: datetime) -> str:
    return value.isoformat()


def add_api_routes(
    app: web.Application, store: Store, tokens: tuple[AdminToken, ...], clock: Clock = utc_now
) -> None:
    check = _Tokens(tokens)

    async def bounces(request: web.Request) -> web.StreamResponse:
        if check.name_of(request) is None:
            return _unauthorized()
        q = request.query
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv", "xlsx"):
            return _bad_request(f"format {fmt!r}: use json, csv or xlsx")
        group = q.get("group_by", "from_domain")
        if group not in _GROUPS:
            return _bad_request(f"group_by {group!r}: use from_domain or ip")
        try:
            top = int(q["top"]) if q.get("top") else None
            flt = report.parse_filter(
                start=q.get("from"),
                end=q.get("to"),
                tz=q.get("tz", "UTC"),
                campaigns=q.getall("campaign", []),
                kind=q.get("type", "soft"),
                group_by=_GROUPS[group],
                top=top,
                raw=q.get("raw") in ("1", "true"),
                now=clock(),
            )
        except (report.ReportError, ValueError) as exc:
            return _bad_request(str(exc))
        rows = store.iter_bounce_report(
            flt.start, flt.end, flt.types, flt.campaigns, flt.group_by, flt.top
        )
        if fmt == "json":
            return web.json_response(await _json_report(rows, flt))
        return await _file_report(request, rows, flt, fmt)

    async def suppression_get(request: web.Request) -> web.Response:
        if check.name_of(request) is None:
            return _unauthorized()
        key = _key(request.match_info["address"])
        if key is None:
            return _bad_request("malformed address")
        profile = await store.profile(key)
        if profile is None or not profile["suppression_reason"]:
            return web.json_response({"address": key, "suppressed": False}, status=404)
        return web.json_response(
            {
                "address": key,
                "suppressed": True,
                "reason": profile["suppression_reason"],
                "source": profile["suppression_source"],
                "since": _iso(profile["suppressed_at"]),
                "status": profile["status"],
            }
        )

    async def suppression_delete(request: web.Request) -> web.Response:
        name = check.name_of(request)
        if name is None:
            return _unauthorized()
        key = _key(request.match_info["address"])
        if key is None:
            return _bad_request("malformed address")
        reason = request.query.get("reason", "").strip()
        if not reason:
            return _bad_request("a reason is required (?reason=...): it goes to the audit log")
        removed = await store.remove_suppression(key, f"token:{name}", reason)
        if removed is None:
            return web.json_response({"address": key, "removed": False}, status=404)
        return web.json_response({"address": key, "removed": True, "was": removed.reason})

    app.router.add_get("/api/v1/reports/bounces", bounces)
    app.router.add_get("/api/v1/suppression/{address}", suppression_get)
    app.router.add_delete("/api/v1/suppression/{address}", suppression_delete)


def _key(address: str) -> str | None:
    try:
        validate_address(address)
    except AddressError:
        return None
    return normalise_address(address)


async def _json_report(rows: Any, flt: report.ReportFilter) -> dict[str, Any]:
    out = []
    async for r in rows:
        item = {
            flt.group_column: r.group,
            "bounce_text": r.bounce_text,
            "amount": r.amount,
            "messages": r.messages,
            "recipient_domains": r.recipient_domains,
            "category": r.category,
            "first_seen": _iso(r.first_seen),
            "last_seen": _iso(r.last_seen),
        }
        if flt.raw:
            item["sample"] = r.sample
        out.append(item)
    return {
        "from": _iso(flt.start),
        "to": _iso(flt.end),
        "group_by": flt.group_column,
        "types": list(flt.types),
        "campaigns": list(flt.campaigns),
        "rows": out,
    }


async def _file_report(
    request: web.Request, rows: Any, flt: report.ReportFilter, fmt: str
) -> web.StreamResponse:
    # Written to a temporary file, then streamed from it: a million rows never sit in memory.
    with tempfile.TemporaryFile() as spool:
        if fmt == "xlsx":
            await report.write_xlsx(rows, flt, spool)
        else:
            text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
            await report.write_csv(rows, flt, text)
            text.flush()
            text.detach()
        spool.seek(0)
        content_type = (
            "text/csv; charset=utf-8"
            if fmt == "csv"
            else "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": content_type,
                "Content-Disposition": f'attachment; filename="bounces.{fmt}"',
            }
        )
        await response.prepare(request)
        while chunk := spool.read(1 << 16):
            await response.write(chunk)
        await response.write_eof()
    return response
