"""The incidents page: provider incidents, and their release (audited)."""

from __future__ import annotations

from aiohttp import web

from relay.web.api import BadNumber, parse_number
from relay.web.html import concat, element, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.shell import (
    FORM,
    MAX_ID,
    SESSION,
    Guard,
    PageContext,
    Pages,
    actor,
    back_to,
    confirmed_form,
    csrf_field,
    outcome_notice,
    when,
    whole_page,
)


class IncidentPages(Pages):
    """/incidents and their release."""

    async def incidents_page(self, request: web.Request) -> web.Response:
        incidents = await self.store.list_incidents(None, 100)
        csrf = csrf_field(request[SESSION])
        rows = [
            [
                element("span", f"#{i.id}", id=f"i{i.id}"),
                i.state,
                when(i.opened_at),
                when(i.last_seen_at),
                i.source_ip,
                f"{i.scope}: {i.destination}",
                i.recipients,
                i.replies,
                i.lifted,
                i.category,
                i.template,
                f"{i.released_by}: {i.release_reason}"
                if i.state == "released"
                else confirmed_form("/incidents/release", csrf, ("id", i.id), "Release"),
            ]
            for i in incidents
        ]
        body = concat(
            outcome_notice(request),
            element(
                "p",
                "One reply template hitting many recipients at one destination from one IP: "
                "its replies defer instead of bouncing and suppress nobody. Releasing lifts every "
                "suppression its replies made and retries its deferred mail now.",
            ),
            table(
                [
                    "id",
                    "state",
                    "opened",
                    "last seen",
                    "source IP",
                    "destination",
                    "recipients",
                    "replies",
                    "lifted",
                    "category",
                    "reply template",
                    "",
                ],
                rows,
                numeric={6, 7, 8},
            ),
        )
        return whole_page(request, "Incidents", body)

    async def incident_release(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        reason = str(form.get("reason", "")).strip()
        try:
            incident_id = parse_number(str(form.get("id", "")), "incident id", 1, MAX_ID)
        except BadNumber as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        if form.get("confirm") != "yes" or not reason or incident_id is None:
            raise back_to(
                "/incidents", problem="Releasing needs a reason and the confirmation box."
            )
        released = await self.store.release_incident(
            incident_id, self.clock(), actor(request), reason
        )
        if not released:
            raise back_to("/incidents", problem=f"Incident #{incident_id} was released already.")
        raise back_to(
            "/incidents",
            done=f"Incident #{incident_id} released: {released[0]} suppressions lifted, "
            f"{released[1]} deferred deliveries due now.",
        )


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = IncidentPages(ctx)
    app.router.add_get("/incidents", guarded(pages.incidents_page))
    app.router.add_post("/incidents/release", same_origin_only(guarded(pages.incident_release)))
