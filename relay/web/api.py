"""The JSON API for platforms that pull reports and manage suppressions programmatically.

    GET    /api/v1/reports/bounces?from=&to=&tz=&campaign=&group_by=from_domain|ip
                                   &type=soft|hard|all&top=&format=json|csv|xlsx
    GET    /api/v1/suppression/{address}
    DELETE /api/v1/suppression/{address}?reason=...     (the reason is required)

Every call needs ``Authorization: Bearer <token>``; tokens are ``[[admin.tokens]]``
(a name and the scrypt hash of the token), and the audit log names the token that
removed an address (``token:<name>``). Reports reuse the CLI's filter checks and its
one export (``relay.reports.export.export``, sent by ``relay.web.downloads``), so the API
returns the same rows and the same CSV/XLSX bytes.

A token is checked by ``relay.passwords.SecretChecker``: one verified before is answered
from memory; a new one costs scrypt in a worker thread. Wrong tokens are limited per
client (``API_FAILURES`` in ``API_WINDOW``, then 429 with Retry-After); when too many new
tokens wait for a check the answer is 503 with Retry-After. Numbers in parameters are
ASCII digits within a range (``parse_number``, shared with the admin pages), else 400.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from aiohttp import web

from policies.addresses import AddressError, normalise_address, validate_address
from relay.clock import Clock, utc_now
from relay.config import AdminToken
from relay.passwords import AttemptLimit, CheckerBusy, SecretChecker
from relay.reports import export as report
from relay.store import Store
from relay.web.downloads import send_report

__all__ = [
    "API_FAILURES",
    "API_WINDOW",
    "PERIOD_OUT_OF_RANGE",
    "TOKEN_CHECKER",
    "BadNumber",
    "add_api_routes",
    "parse_number",
]

_GROUPS = {"from_domain": "from-domain", "ip": "ip", "provider": "provider"}
_FORMATS: dict[str, report.Format] = {"json": "json", "csv": "csv", "xlsx": "xlsx"}
API_FAILURES = 10  # wrong tokens per client ...
API_WINDOW = timedelta(seconds=60)  # ... in this window, then 429 until it passes
MAX_TOP = 1_000_000
# datetime arithmetic past year 1 or 9999 (from=0001-01-01T00:00+01:00) overflows
PERIOD_OUT_OF_RANGE = (
    "from/to: the period reaches outside the years 1 to 9999 in UTC; pick dates within them"
)
TOKEN_CHECKER = web.AppKey("token_checker", SecretChecker)


class BadNumber(ValueError):
    """A numeric parameter that is not ASCII digits within its range; says which and why."""


def parse_number(raw: str | None, name: str, low: int, high: int) -> int | None:
    """``raw`` as a whole number from ``low`` to ``high``; None when absent or empty.

    Only ASCII digits: no sign, no spaces, no exponent, no other scripts' digits (Python's
    int() takes "٣" and " +3 "). The length is checked before converting, so a megabyte of
    digits costs nothing."""
    if not raw:
        return None
    if len(raw) <= len(str(high)) and raw.isascii() and raw.isdigit():
        value = int(raw)
        if low <= value <= high:
            return value
    shown = raw if len(raw) <= 24 else raw[:24] + "..."
    raise BadNumber(f"{name} {shown!r}: use a whole number from {low} to {high} (digits 0-9)")


def _refusal(
    status: type[web.HTTPException], why: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    return status(text=json.dumps({"error": why}), content_type="application/json", headers=headers)


class _Bearer:
    """Who a request's bearer token names; raises 401, 429 or 503 (JSON) otherwise."""

    def __init__(self, checker: SecretChecker, failures: AttemptLimit) -> None:
        self.checker = checker
        self.failures = failures

    async def name_of(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        if not token:
            raise _unauthorized()
        name = self.checker.known(token)
        if name is not None:  # verified before: no hashing, and not counted against the client
            return name
        client = request.remote or "?"
        # Reserved before any await: parallel guesses cannot all pass the limit at once.
        if not self.failures.reserve(client):
            wait = self.failures.retry_after(client)
            raise _refusal(
                web.HTTPTooManyRequests,
                f"too many wrong bearer tokens from {client}; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        try:
            name = await self.checker.match(token)
        except CheckerBusy as exc:
            self.failures.release(client)
            raise _refusal(web.HTTPServiceUnavailable, str(exc), {"Retry-After": "1"}) from exc
        if name is None:
            raise _unauthorized()
        self.failures.release(client)
        return name


def _unauthorized() -> web.HTTPException:
    return _refusal(
        web.HTTPUnauthorized,
        "missing or wrong bearer token",
        {"WWW-Authenticate": 'Bearer realm="bounce-relay"'},
    )


def _bad_request(why: str) -> web.Response:
    return web.json_response({"error": why}, status=400)


def _iso(value: datetime) -> str:
    return value.isoformat()


def add_api_routes(
    app: web.Application, store: Store, tokens: tuple[AdminToken, ...], clock: Clock = utc_now
) -> None:
    checker = SecretChecker((t.name, t.hash) for t in tokens)
    app[TOKEN_CHECKER] = checker
    bearer = _Bearer(checker, AttemptLimit(API_FAILURES, API_WINDOW, clock))

    async def bounces(request: web.Request) -> web.StreamResponse:
        await bearer.name_of(request)
        q = request.query
        fmt = _FORMATS.get(q.get("format", "json"))
        if fmt is None:
            return _bad_request(f"format {q.get('format')!r}: use json, csv or xlsx")
        group = q.get("group_by", "from_domain")
        if group not in _GROUPS:
            return _bad_request(f"group_by {group!r}: use from_domain, ip or provider")
        try:
            top = parse_number(q.get("top"), "top", 1, MAX_TOP)
            flt = report.parse_filter(
                start=q.get("from"),
                end=q.get("to"),
                tz=q.get("tz", "UTC"),
                campaigns=q.getall("campaign", []),
                kind=q.get("type", "soft"),
                group_by=_GROUPS[group],
                top=top,
                raw=q.get("raw") in ("1", "true"),
                by=q.get("by") or None,
                now=clock(),
            )
        except ValueError as exc:  # ReportError, BadNumber
            return _bad_request(str(exc))
        except OverflowError:
            return _bad_request(PERIOD_OUT_OF_RANGE)
        return await send_report(request, store, flt, fmt)

    async def suppression_get(request: web.Request) -> web.Response:
        await bearer.name_of(request)
        key = _key(request.match_info["address"])
        if key is None:
            return _bad_request("malformed address")
        profile = await store.profile(key)
        # An entry's reason and time come together (both None without one).
        if profile is None or not profile.suppression_reason or profile.suppressed_at is None:
            return web.json_response({"address": key, "suppressed": False}, status=404)
        return web.json_response(
            {
                "address": key,
                "suppressed": True,
                "reason": profile.suppression_reason,
                "source": profile.suppression_source,
                "since": _iso(profile.suppressed_at),
                "status": profile.status,
            }
        )

    async def suppression_delete(request: web.Request) -> web.Response:
        name = await bearer.name_of(request)
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
