"""The queue page: deliveries by state, deferral reasons, a delivery's attempts."""

from __future__ import annotations

from aiohttp import web

from relay.web.api import BadNumber, parse_number
from relay.web.html import Content, concat, element, table
from relay.web.pages.shell import MAX_ID, Guard, PageContext, Pages, refused, when, whole_page


class QueuePages(Pages):
    """/queue."""

    async def queue_page(self, request: web.Request) -> web.Response:
        try:
            delivery_id = parse_number(request.query.get("id"), "id", 1, MAX_ID)
        except BadNumber as exc:
            return refused(request, "Queue", f"delivery {exc}")
        stats = await self.store.queue_stats()
        counts: list[list[Content]] = [
            [state, n, when(oldest)] for state, (n, oldest) in sorted(stats.items())
        ]
        reasons: list[list[Content]] = [
            [reply, n] for reply, n in await self.store.deferral_reasons()
        ]
        history = None
        if delivery_id is not None:
            events = await self.store.events_of_delivery(delivery_id)
            history = concat(
                element("h2", f"Delivery {delivery_id}"),
                table(
                    ["when", "event", "attempt", "code", "category", "rule", "source IP", "reply"],
                    [
                        [
                            when(e.occurred_at),
                            e.type,
                            e.attempt or None,
                            e.code or None,
                            e.category,
                            e.rule,
                            e.source_ip,
                            e.reply_text,
                        ]
                        for e in events
                    ],
                ),
            )
        body = concat(
            table(["state", "deliveries", "oldest message received"], counts, numeric={1}),
            element("h2", "Top deferral reasons"),
            table(["last reply", "queued"], reasons, numeric={1}),
            element(
                "form",
                element("input", name="id", placeholder="delivery id"),
                element("button", "Attempt history"),
                method="get",
            ),
            history,
        )
        return whole_page(request, "Queue", body)


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = QueuePages(ctx)
    app.router.add_get("/queue", guarded(pages.queue_page))
