"""The profile page: what is known about one address. Its status ("nothing known" when the
relay has no profile, entry, bounce or delivery for it), the entries that apply with the
bounces behind them and the administrators' acts, and every delivery to it (the newest
``DELIVERIES_SHOWN``) with what happened on each attempt."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from aiohttp import web

from policies.addresses import AddressError, normalise_address, validate_address
from policies.verdict import explain
from relay.reports.replay import judged_again
from relay.store import AddressDelivery, EvidenceBounce, RecordedBounce, SuppressionEvidence
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.shell import Guard, PageContext, Pages, error_notice, when, whole_page

TITLE = "Profile"
DELIVERIES_SHOWN = 100
NOTHING_KNOWN = "nothing known"


def _incident_link(incident_id: int | None, state: str | None) -> Content:
    """A bounce's incident on the profile page: a link to it in the incidents list."""
    if not incident_id:
        return None
    return link(f"/incidents#i{incident_id}", f"#{incident_id} ({state or ''})")


_BOUNCE_COLUMNS = [
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
]


def _or_none(headers: list[str], rows: Sequence[Sequence[Content]], none: str) -> Markup:
    """The table, or a line saying there is nothing to show."""
    return table(headers, rows) if rows else element("p", none, class_="muted")


def _form(address: str) -> Markup:
    return element(
        "form",
        element(
            "label",
            "Address",
            element("input", type="search", name="address", value=address, required=True),
        ),
        element("button", "Look up"),
        class_="filters",
        method="get",
        action="/profile",
    )


def _delivery(d: AddressDelivery) -> Markup:
    """One delivery: its envelope, then each event (attempt, bounce message, cancellation)."""
    history = link(f"/queue/delivery?id={d.id}", f"Delivery #{d.id}")
    envelope = (
        f"{d.state} · From {d.envelope_sender or '<>'} · campaign {d.campaign or '—'} · "
        f"created {when(d.received_at)} · queue id {d.queue_id} · {d.attempts} attempts"
    )
    if not d.events:
        attempts: Markup = element("p", "Not attempted yet.", class_="muted")
    else:
        left_out = d.events_total - len(d.events)
        attempts = table(
            ["when", "result", "attempt", "code", "reply", "source IP", "destination"],
            [
                [
                    when(e.occurred_at),
                    e.type,
                    e.attempt or None,
                    " ".join(str(p) for p in (e.code, e.enhanced) if p) or None,
                    e.reply_text,
                    e.source_ip,
                    e.destination,
                ]
                for e in d.events
            ],
            numeric={2},
            caption=f"The newest {len(d.events)}; {left_out} older left out" if left_out else None,
        )
    return element(
        "section",
        element("h3", history),
        element("p", envelope, class_="muted"),
        attempts,
    )


class ProfilePages(Pages):
    """/profile."""

    def _judged_again(self, bounce: EvidenceBounce) -> str:
        """What the relay's rules decide for this bounce today (policies.verdict, as
        ``classify --replay`` asks it): tells an administrator whether lifting the entry
        would be undone by the next such reply."""
        if self.rules is None or bounce.type == "non_delivery":
            return ""
        return explain(judged_again(RecordedBounce.of_evidence(bounce), self.rules()))

    def _evidence(self, evidence: SuppressionEvidence) -> Markup:
        """The entries that apply, the bounces behind them, the administrators' acts."""
        entries = [
            [e.kind, e.scope, e.source, when(e.created_at), when(e.until), e.reason]
            for e in evidence.entries
        ]
        bounces = [
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
        ]
        acts = [[when(a.occurred_at), a.actor, a.action, a.reason] for a in evidence.audit]
        return concat(
            element("h2", "Why: entries that apply"),
            _or_none(
                ["entry", "scope", "source", "since", "until", "reason"],
                entries,
                "No entry applies: mail to this address goes out.",
            ),
            element("h2", "Bounces behind them"),
            _or_none(_BOUNCE_COLUMNS, bounces, "No bounce or complaint recorded."),
            element("h2", "Administrators' acts"),
            _or_none(["when", "who", "what", "why"], acts, "None."),
        )

    async def _known(self, key: str) -> Markup:
        profile = await self.store.profile(key)
        evidence = await self.store.suppression_evidence(key)
        deliveries, more = await self.store.deliveries_of_address(key, DELIVERIES_SHOWN)
        if not (profile or evidence.entries or evidence.bounces or deliveries):
            return element(
                "p",
                element("b", key),
                f": {NOTHING_KNOWN}. The relay has no profile, no suppression entry, no bounce "
                "and no delivery for this address: mail to it goes out.",
            )
        status = profile.status.replace("_", " ") if profile else "active"
        since = f" since {when(profile.status_changed_at)}" if profile else ""
        cut = (
            element(
                "p",
                f"The newest {DELIVERIES_SHOWN} deliveries; older ones are left out.",
                class_="muted",
            )
            if more
            else None
        )
        listed = [_delivery(d) for d in deliveries] or [
            element("p", "No deliveries to this address.", class_="muted")
        ]
        return concat(
            element("p", element("b", key), f": {status}{since}"),
            self._evidence(evidence),
            element("h2", "Deliveries"),
            cut,
            *listed,
        )

    async def profile_page(self, request: web.Request) -> web.Response:
        address = request.query.get("address", "").strip()
        if not address:
            return whole_page(request, TITLE, _form(""))
        try:
            validate_address(address)
            key = normalise_address(address)
        except AddressError as exc:
            body = concat(error_notice(f"Address: {exc.why}."), _form(address))
            return whole_page(request, TITLE, body, status=400)
        body = concat(_form(address), await self._known(key))
        return whole_page(request, f"{TITLE}: {key}", body)


def profile_url(address: str) -> str:
    """The profile page of ``address`` (the suppression list links each entry to it)."""
    return f"/profile?address={quote(address, safe='@')}"


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = ProfilePages(ctx)
    app.router.add_get("/profile", guarded(pages.profile_page))
