"""The heartbeat of a relay that holds leases: ``relay_instances``.    ~ a lease owner's pulse

A delivering relay registers its lease owner name and beats every ``HEARTBEAT``, stamped
with the database's clock. One silent for ``PRESUMED_DEAD_AFTER`` is presumed dead, and the
next claim of a live peer takes its leases over (a SIGKILLed relay's work goes on within
seconds, not after ``[delivery] lease``). The beat runs as a task of its own beside the
sends, so a slow transaction never costs its lease; a relay that could not beat that long
(stalled, cut off from the database) may find its leases taken, and its late outcomes are
fenced by the lease token like any others. Why a table and not an advisory lock or
``pg_stat_activity``: docs/operations.md, "When a relay dies: its leases".
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta

import structlog

from relay.errors import StoreError
from relay.store import Store

__all__ = ["HEARTBEAT", "PRESUMED_DEAD_AFTER", "Heartbeat"]

log = structlog.get_logger("relay.delivery")

# How often a worker tells the registry it is alive, and the silence after which the others
# presume it dead and take its leases over. Five beats to a silence: a beat or two lost to a
# slow database or a busy event loop costs nothing; a SIGKILLed relay's work goes on within
# PRESUMED_DEAD_AFTER plus a poll, where the lease alone took 15 minutes.
HEARTBEAT = timedelta(seconds=2)
PRESUMED_DEAD_AFTER = timedelta(seconds=10)
# Relays silent this long that hold no lease any more leave the registry (looked for every
# PRUNE_EVERY beats).
FORGET_RELAYS_AFTER = timedelta(hours=1)
PRUNE_EVERY = 30


class Heartbeat:
    """The registry row of lease owner ``owner``: registered, kept beating, retired."""

    def __init__(self, store: Store, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._beat_failing = False

    async def register(self) -> None:
        """Register ``owner`` before anything is leased to it (raises StoreError)."""
        await self.store.relay_heartbeat(
            self.owner, PRESUMED_DEAD_AFTER, socket.gethostname(), os.getpid()
        )

    async def keep_registered(self) -> None:
        """Beat every ``HEARTBEAT`` until cancelled, which comes after ``stop``: a relay
        draining its transactions is alive. A beat that fails is logged and made again at the
        next; PRESUMED_DEAD_AFTER without one and the others take this relay's leases over."""
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT.total_seconds())
            beats += 1
            try:
                await self._beat()
                if beats % PRUNE_EVERY == 0:
                    await self.store.prune_relay_instances(FORGET_RELAYS_AFTER)
            except StoreError as exc:
                if not self._beat_failing:
                    log.warning(
                        "delivery.heartbeat_failed",
                        error=str(exc),
                        action="beating again; silent for "
                        f"{PRESUMED_DEAD_AFTER.total_seconds():g} s, this relay's leases go "
                        "to the others",
                    )
                self._beat_failing = True
            except Exception as exc:  # a bug here must not silence a live relay for good
                log.exception("delivery.heartbeat_error", error_type=type(exc).__name__)

    async def _beat(self) -> None:
        silence = await self.store.relay_heartbeat(
            self.owner, PRESUMED_DEAD_AFTER, socket.gethostname(), os.getpid()
        )
        if self._beat_failing:
            log.info("delivery.heartbeat_resumed", silent_seconds=_seconds(silence))
        self._beat_failing = False
        if silence is None or silence >= PRESUMED_DEAD_AFTER:
            log.warning(
                "delivery.presumed_dead",
                silent_seconds=_seconds(silence),
                action="the other relays may have taken this relay's leases over; what it "
                "still sends of them is fenced (at-least-once)",
            )

    async def retire(self) -> None:
        """After ``stop``: this relay is gone, and a lease it could not hand back goes to the
        next claim of another relay instead of waiting out its silence."""
        try:
            await self.store.retire_relay_instance(self.owner)
        except StoreError as exc:
            log.warning(
                "delivery.retire_failed",
                error=str(exc),
                action="a lease it still holds is taken over once its heartbeat is missed",
            )


def _seconds(silence: timedelta | None) -> float | None:
    return round(silence.total_seconds(), 1) if silence is not None else None
