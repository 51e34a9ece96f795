"""Provider incidents: detection, the open ones every worker holds, listing and release
(``policies.incidents`` says what they are). Queries: ``incidents.sql``."""

from __future__ import annotations

from datetime import datetime

from policies.incidents import IncidentRules, IncidentScope, OpenIncident
from policies.smtp_reply import DOMAIN_ABSENT_PREFIX
from relay.store.base import StoreBase
from relay.store.records import IncidentCheck, IncidentDetail, IncidentSummary, OpenedIncident

__all__ = ["IncidentStore"]

_INCIDENT_LOCK = 0x6272_696E_6369  # "brinci": one relay process detects incidents at a time


class IncidentStore(StoreBase):
    async def check_incidents(self, now: datetime, rules: IncidentRules) -> IncidentCheck | None:
        """One detection pass (None when another relay process is at it): quiet incidents
        close, new ones open, the window's replies they explain join them and, with
        ``lift_on_open``, the suppressions those replies made are lifted, all at once."""
        async with self._transaction("check incidents") as tx:
            if not await tx.conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _INCIDENT_LOCK):
                return None
            closed = await tx.rows("close_quiet_incidents", now, now - rules.close_after)
            since = now - rules.window
            opened = await tx.rows(
                "detect_incidents",
                now,
                since,
                rules.min_recipients,
                rules.min_share,
                rules.scope.value,
            )
            # Our resolver's own incident: "no such domain" for many domains at once.
            resolver = await tx.rows(
                "detect_resolver_incident",
                now,
                since,
                rules.min_recipients,
                rules.min_share,
                IncidentScope.RESOLVER.value,
                DOMAIN_ABSENT_PREFIX,
            )
            for incident in resolver:
                await tx.status(
                    "tag_resolver_incident_events", incident["id"], since, DOMAIN_ABSENT_PREFIX
                )
            ids = [r["id"] for r in opened]
            if ids:
                await tx.status("tag_incident_events", ids, since)
            opened = [*opened, *resolver]
            ids += [r["id"] for r in resolver]
            lifted = 0
            if ids and rules.lift_on_open:
                lifted = await tx.value(
                    "lift_incident_suppressions",
                    ids,
                    "incident detection",
                    "the bounce was part of an incident (a provider's or our resolver's), "
                    "not about the recipient",
                    now,
                )
        return IncidentCheck(
            opened=[OpenedIncident(**dict(r)) for r in opened],
            closed=[r["id"] for r in closed],
            lifted=lifted,
        )

    async def open_incidents(self) -> list[OpenIncident]:
        rows = await self._rows("open_incidents", what="read incidents")
        return [
            OpenIncident(
                r["id"], r["template"], r["destination"], IncidentScope(r["scope"]), r["source_ip"]
            )
            for r in rows
        ]

    async def list_incidents(self, state: str | None, limit: int) -> list[IncidentSummary]:
        rows = await self._rows("list_incidents", state, limit, what="list incidents")
        return [IncidentSummary(**dict(r)) for r in rows]

    async def incident(self, incident_id: int) -> IncidentDetail | None:
        row = await self._row("incident_by_id", incident_id, what="read incident")
        return IncidentDetail(**dict(row)) if row else None

    async def release_incident(
        self, incident_id: int, now: datetime, actor: str, reason: str
    ) -> tuple[int, int] | None:
        """End an incident in one step: lift every suppression its replies made (profiles
        active, audited), make its deferred deliveries due now. (lifted, due now); None when
        there is no such incident or it was released already."""
        async with self._transaction("release incident") as tx:
            row = await tx.row("release_incident", incident_id, now, actor, reason)
            assert row is not None  # counts: always one row
            if not row["released"]:
                return None
            lifted = await tx.value("lift_incident_suppressions", [incident_id], actor, reason, now)
        return int(lifted), int(row["due_now"])
