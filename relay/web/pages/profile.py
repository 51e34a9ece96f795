"""The profile page: one address's status, the entries that apply, the bounces behind them."""

from __future__ import annotations

from aiohttp import web

from policies.addresses import AddressError, normalise_address
from policies.verdict import explain
from relay.reports.replay import judged_again
from relay.store import EvidenceBounce, RecordedBounce
from relay.web.html import Content, concat, element, link, table
from relay.web.pages.shell import Guard, PageContext, Pages, refused, when, whole_page


def _incident_link(incident_id: int | None, state: str | None) -> Content:
    """A bounce's incident on the profile page: a link to it in the incidents list."""
    if not incident_id:
        return None
    return link(f"/incidents#i{incident_id}", f"#{incident_id} ({state or ''})")


class ProfilePages(Pages):
    """/profile."""

    def _judged_again(self, bounce: EvidenceBounce) -> str:
        """What the relay's rules decide for this bounce today (policies.verdict, as
        ``classify --replay`` asks it): tells an administrator whether lifting the entry
        would be undone by the next such reply."""
        if self.rules is None or bounce.type == "non_delivery":
            return ""
        return explain(judged_again(RecordedBounce.of_evidence(bounce), self.rules()))

    async def profile_page(self, request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        result = None
        if address:
            try:
                key = normalise_address(address)
            except AddressError as exc:
                return refused(request, "Profile", f"address: {exc}")
            profile = await self.store.profile(key)
            evidence = await self.store.suppression_evidence(key)
            status = profile.status if profile else "active"
            result = concat(
                element("p", element("b", key), f": {status}"),
                element("h2", "Why: entries that apply"),
                table(
                    ["entry", "scope", "source", "since", "until", "reason"],
                    [
                        [
                            e.kind,
                            e.scope,
                            e.source,
                            when(e.created_at),
                            when(e.until),
                            e.reason,
                        ]
                        for e in evidence.entries
                    ],
                ),
                element("h2", "Bounces behind them"),
                table(
                    [
                        "when",
                        "event",
                        "code",
                        "category",
                        "rule",
                        "source IP",
                        "destination",
                        "campaign",
                        "incident",
                        "reply",
                        "template",
                        "today's rules",
                    ],
                    [
                        [
                            when(b.occurred_at),
                            b.type,
                            b.code or None,
                            b.category,
                            b.rule,
                            b.source_ip,
                            b.destination,
                            b.campaign,
                            _incident_link(b.incident_id, b.incident_state),
                            b.reply_text,
                            b.template,
                            self._judged_again(b),
                        ]
                        for b in evidence.bounces
                    ],
                ),
                element("h2", "Administrators' acts"),
                table(
                    ["when", "who", "what", "why"],
                    [[when(a.occurred_at), a.actor, a.action, a.reason] for a in evidence.audit],
                ),
            )
        body = concat(
            element(
                "form",
                element("input", name="address", value=address, placeholder="address"),
                element("button", "Look up"),
                method="get",
            ),
            result,
        )
        return whole_page(request, "Profile", body)


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = ProfilePages(ctx)
    app.router.add_get("/profile", guarded(pages.profile_page))
