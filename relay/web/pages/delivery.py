"""A delivery's history (/queue/delivery?id=): its message's envelope, its attempts and
events, and the administrators' retries and purges of it. The queue's listing links each
delivery here, as the profile page does; /queue?id=, the old form of this page's address,
is sent here by the queue page.

Read only: a viewer sees it all, and retry and purge stay on the queue page."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from policies.states import DeliveryState
from relay.store import QueueDelivery
from relay.web.api import BadNumber, parse_number
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.shell import (
    MAX_ID,
    Guard,
    PageContext,
    Pages,
    error_notice,
    refused,
    when,
    whole_page,
)

__all__ = ["add_routes"]

_EVENT_COLUMNS = (
    "when",
    "event",
    "attempt",
    "code",
    "category",
    "rule",
    "source IP",
    "destination",
    "reply",
)


class DeliveryPages(Pages):
    """/queue/delivery."""

    async def delivery_page(self, request: web.Request) -> web.Response:
        """One delivery: its message's envelope, its attempts and events, the
        administrators' retries and purges of it."""
        try:
            delivery_id = parse_number(request.query.get("id"), "id", 1, MAX_ID)
        except BadNumber as exc:
            return refused(request, "Delivery", f"delivery {exc}")
        if delivery_id is None:
            return refused(request, "Delivery", "Which delivery? Pick one from the queue.")
        delivery = await self.store.queue_delivery(delivery_id)
        back = element("p", link("/queue", "← Queue"))
        if delivery is None:
            missing = error_notice(
                f"No delivery has the id {delivery_id}. The queue lists those there are."
            )
            return whole_page(request, "Delivery not found", concat(missing, back), status=404)
        events = await self.store.events_of_delivery(delivery_id)
        audit = await self.store.audit_of_delivery(delivery)
        body = concat(
            back,
            _delivery_fields(delivery),
            element("h2", "Attempts and events"),
            table(
                _EVENT_COLUMNS,
                [
                    [
                        when(e.occurred_at),
                        e.type,
                        e.attempt or None,
                        " ".join(str(c) for c in (e.code, e.enhanced) if c),
                        e.category,
                        e.rule,
                        e.source_ip,
                        e.destination,
                        e.reply_text,
                    ]
                    for e in events
                ],
                numeric={2},
            ),
            element("h2", "Administrators' acts"),
            table(
                ["when", "who", "what", "why"],
                [[when(a.occurred_at), a.actor, a.action, a.reason] for a in audit],
            ),
        )
        return whole_page(request, f"Delivery {delivery_id}", body)


def _delivery_fields(d: QueueDelivery) -> Markup:
    open_ = d.state in (DeliveryState.QUEUED, DeliveryState.INFLIGHT)
    last = d.last_reply or (str(d.last_code) if d.last_code else "")  # the reply has its code
    fields: list[tuple[str, Content]] = [
        ("recipient", link("/profile?" + urlencode({"address": d.recipient_key}), d.recipient)),
        ("From (envelope sender)", d.envelope_sender),
        ("From domain", d.from_domain),
        ("campaign", d.campaign),
        ("state", d.state),
        ("attempts", d.attempts),
        ("message", d.queue_id),
        ("Message-ID", d.message_id),
        ("created", when(d.received_at)),
        ("next attempt", when(d.next_attempt_at) if open_ else "none: final"),
        ("last reply", last),
    ]
    if d.recipient_domain_flag:
        # Accepted with a tag by [recipients] (docs/recipient-checks.md): why, in its words.
        fields.append(("recipient domain flagged", d.recipient_domain_flag))
    return table(["field", "value"], [[element("b", k), v] for k, v in fields])


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = DeliveryPages(ctx)
    app.router.add_get("/queue/delivery", guarded(pages.delivery_page))
