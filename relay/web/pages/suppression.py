"""The suppression list page: entries, removal (audited), the audit log."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from policies.addresses import AddressError, normalise_address, validate_address
from relay.web.api import BadNumber, parse_number
from relay.web.html import concat, element, link, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.shell import (
    FORM,
    MAX_PAGE,
    PAGE_ROWS,
    SESSION,
    Guard,
    PageContext,
    Pages,
    actor,
    confirmed_form,
    csrf_field,
    error_notice,
    refused,
    when,
    whole_page,
)


class SuppressionPages(Pages):
    """/suppression and its changes."""

    async def suppression_page(self, request: web.Request) -> web.Response:
        search = request.query.get("search") or None
        try:
            page = parse_number(request.query.get("page"), "page", 1, MAX_PAGE) or 1
        except BadNumber as exc:
            return refused(request, "Suppression list", str(exc))
        entries = await self.store.suppressions_with_cause(
            search, PAGE_ROWS, (page - 1) * PAGE_ROWS
        )
        csrf = csrf_field(request[SESSION])
        rows = [
            [
                e.address,
                e.source,
                when(e.created_at),
                e.reason,
                e.cause,
                confirmed_form("/suppression/remove", csrf, ("address", e.address), "Remove"),
            ]
            for e in entries
        ]
        audit = await self.store.audit_log(20)
        audit_rows = [[when(a.occurred_at), a.actor, a.action, a.subject, a.reason] for a in audit]
        notice = request.query.get("notice")
        next_page = urlencode({"search": search or "", "page": page + 1})
        body = concat(
            error_notice(notice) if notice else None,
            element(
                "form",
                element("input", name="search", placeholder="address contains", value=search or ""),
                element("button", "Search"),
                method="get",
            ),
            table(["address", "source", "since", "reason", "bounce that caused it", ""], rows),
            element("p", link(f"?{next_page}", "next page")) if page < MAX_PAGE else None,
            element("h2", "Audit log"),
            table(["when", "who", "what", "address", "why"], audit_rows),
        )
        return whole_page(request, "Suppression list", body)

    async def suppression_remove(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        address, reason = str(form.get("address", "")), str(form.get("reason", "")).strip()
        if form.get("confirm") != "yes" or not reason:
            raise web.HTTPSeeOther(
                "/suppression?"
                + urlencode({"notice": "Removing needs a reason and the confirmation box."})
            )
        try:
            validate_address(address)
        except AddressError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        removed = await self.store.remove_suppression(
            normalise_address(address), actor(request), reason
        )
        notice = f"Removed {address}." if removed else f"{address} was not on the list."
        raise web.HTTPSeeOther("/suppression?" + urlencode({"notice": notice}))


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = SuppressionPages(ctx)
    app.router.add_get("/suppression", guarded(pages.suppression_page))
    app.router.add_post("/suppression/remove", same_origin_only(guarded(pages.suppression_remove)))
