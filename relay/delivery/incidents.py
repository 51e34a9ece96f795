"""Keeps every delivery worker's view of provider incidents current.    (policies/incidents.py)

Each relay process runs one ``IncidentWatch``. Every ``[incidents] check_every`` it runs a
detection pass in the store (one process at a time does the counting, under an advisory
lock; the others skip it) and reloads the open incidents its worker checks replies against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from relay.clock import Clock, utc_now
from relay.config import Rules
from relay.delivery.worker import DeliveryWorker
from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import Store

__all__ = ["IncidentWatch"]

log = structlog.get_logger("relay.incidents")


class IncidentWatch:
    def __init__(
        self,
        store: Store,
        worker: DeliveryWorker,
        rules: Callable[[], Rules],
        *,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.rules = rules
        self.clock = clock
        self.metrics = metrics or Metrics()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except StoreError as exc:
                log.warning("incident.check_failed", error=str(exc), action="retrying later")
            await asyncio.sleep(self.rules().incidents.check_every.total_seconds())

    async def check(self) -> None:
        """One pass: detect (unless another process is at it), then reload the open ones."""
        rules = self.rules().incidents
        if not rules.enabled:
            self.worker.incidents = []
            return
        result = await self.store.check_incidents(self.clock(), rules)
        if result is not None:
            for incident in result.opened:
                self.metrics.incidents.labels("opened").inc()
                log.warning(
                    "incident.opened",
                    incident_id=incident.id,
                    destination=incident.destination,
                    scope=incident.scope,
                    source_ip=incident.source_ip,
                    template=incident.template,
                    category=incident.category,
                    recipients=incident.recipients,
                    attempted=incident.attempted,
                    action="its replies now defer instead of bouncing and suppress nobody; "
                    "`bounce-relay incidents release ID` once the provider has recovered",
                )
            if result.lifted:
                log.warning("incident.suppressions_lifted", lifted=result.lifted)
            for incident_id in result.closed:
                self.metrics.incidents.labels("closed").inc()
                log.info("incident.closed", incident_id=incident_id, why="no matching reply lately")
        self.worker.incidents = await self.store.open_incidents()
