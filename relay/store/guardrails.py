"""Guardrails in the store: the sends to judge and their counts, state changes, the holds
every worker reloads, the canary's reservations, an administrator's release. Queries:
``guardrails.sql``; the table: migration 0021. ``policies.guardrails`` judges,
``relay.delivery.guardrails`` decides when."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from policies.categories import RECIPIENT_CATEGORIES
from policies.guardrails import SendCounts
from relay.errors import StoreError
from relay.store.base import StoreBase

__all__ = ["GuardrailRow", "GuardrailSample", "GuardrailStore", "Send", "SendToJudge"]

# "brgrdr": one relay process judges the sends at a time.
_GUARDRAIL_LOCK = 0x6272_6772_6472


@dataclass(frozen=True)
class Send:
    """What a guardrail watches: a campaign from one sending domain to one provider."""

    campaign: str
    from_domain: str
    provider: str

    def label(self) -> str:
        return f"{self.campaign} / {self.from_domain or '(no From domain)'} / {self.provider}"


@dataclass(frozen=True)
class SendToJudge:
    send: Send
    state: str | None  # None: no row yet
    since: datetime | None
    canary_slice: int
    canary_sent: int
    level: str | None
    released_at: datetime | None
    baseline: SendCounts | None


@dataclass(frozen=True)
class GuardrailRow:
    send: Send
    state: str
    since: datetime
    canary_slice: int
    canary_sent: int
    level: str
    reason: str
    evidence: dict[str, Any] | None
    tripped_at: datetime | None
    released_at: datetime | None
    released_by: str | None
    baseline: SendCounts | None
    checked_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class GuardrailSample:
    template: str
    category: str | None
    code: str
    sample: str | None
    amount: int


def _counts(value: Any) -> SendCounts | None:
    if value is None:
        return None
    data = json.loads(value) if isinstance(value, str) else value
    return SendCounts(
        **{k: int(v) for k, v in data.items() if k in SendCounts.__dataclass_fields__}
    )


def _evidence(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    data: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return data


def _row(r: Any) -> GuardrailRow:
    return GuardrailRow(
        send=Send(r["campaign"], r["from_domain"], r["provider"]),
        state=r["state"],
        since=r["since"],
        canary_slice=r["canary_slice"],
        canary_sent=r["canary_sent"],
        level=r["level"],
        reason=r["reason"],
        evidence=_evidence(r["evidence"]),
        tripped_at=r["tripped_at"],
        released_at=r["released_at"],
        released_by=r["released_by"],
        baseline=_counts(r["baseline"]),
        checked_at=r["checked_at"],
        updated_at=r["updated_at"],
    )


class GuardrailStore(StoreBase):
    @asynccontextmanager
    async def guardrail_lock(self) -> AsyncIterator[bool]:
        """Hold the guardrails' advisory lock for the block: True, or False at once when
        another relay process is judging."""
        async with self._advisory_lock(_GUARDRAIL_LOCK, "take the guardrail lock") as ours:
            yield ours

    async def guardrail_sends(self, active_since: datetime) -> list[SendToJudge]:
        """The sends with attempts since ``active_since`` (hour buckets), with their rows."""
        rows = await self._rows("guardrail_sends", active_since, what="read guardrail sends")
        return [
            SendToJudge(
                send=Send(r["campaign"], r["from_domain"], r["provider"]),
                state=r["state"],
                since=r["since"],
                canary_slice=r["canary_slice"] or 0,
                canary_sent=r["canary_sent"] or 0,
                level=r["level"],
                released_at=r["released_at"],
                baseline=_counts(r["baseline"]),
            )
            for r in rows
        ]

    async def guardrail_counts(
        self, sends: Sequence[tuple[Send, datetime]]
    ) -> dict[Send, SendCounts]:
        """Each send's counts from the hour of its start on."""
        if not sends:
            return {}
        rows = await self._rows(
            "guardrail_counts",
            [s.campaign for s, _ in sends],
            [s.from_domain for s, _ in sends],
            [s.provider for s, _ in sends],
            [start for _, start in sends],
            sorted(c.value for c in RECIPIENT_CATEGORIES),
            what="count guardrail sends",
        )
        return {
            Send(r["campaign"], r["from_domain"], r["provider"]): SendCounts(
                attempts=r["attempts"],
                delivered=r["delivered"],
                bounced=r["bounced"],
                hard_bounced=r["hard_bounced"],
                unknown_users=r["unknown_users"],
                complaints=r["complaints"],
            )
            for r in rows
        }

    async def guardrail_samples(
        self, send: Send, start: datetime, limit: int = 3
    ) -> list[GuardrailSample]:
        rows = await self._rows(
            "guardrail_samples",
            send.campaign,
            send.from_domain,
            send.provider,
            start,
            limit,
            what="read guardrail samples",
        )
        return [
            GuardrailSample(r["template"], r["category"], r["code"], r["sample"], r["amount"])
            for r in rows
        ]

    async def open_guardrail(self, send: Send, now: datetime) -> None:
        await self._status(
            "open_guardrail",
            send.campaign,
            send.from_domain,
            send.provider,
            now,
            what="record a guardrail",
        )

    async def start_canary(self, send: Send, now: datetime, slice_: int) -> tuple[str, bool]:
        """The send's state, a canary of ``slice_`` if it had no row; and whether this call
        started it."""
        for _ in range(2):
            row = await self._row(
                "start_canary",
                send.campaign,
                send.from_domain,
                send.provider,
                now,
                slice_,
                what="start a canary",
            )
            # None: another relay inserted it while this statement ran; its snapshot, taken
            # before that commit, cannot see the row. The next statement can.
            if row is not None:
                return row["state"], row["inserted"]
        raise StoreError("start a canary: the guardrail row vanished as it was written")

    async def campaign_messages(self, campaign: str, from_domain: str) -> int:
        return int(
            await self._value(
                "campaign_messages", campaign, from_domain, what="count campaign messages"
            )
        )

    async def reserve_canary(self, send: Send, wanted: int) -> int | None:
        """How many of ``wanted`` deliveries of a canary send may go (None: no canary now)."""
        value = await self._value(
            "reserve_canary",
            send.campaign,
            send.from_domain,
            send.provider,
            wanted,
            what="reserve canary deliveries",
        )
        return None if value is None else int(value)

    async def guardrail_holds(self) -> dict[Send, str]:
        rows = await self._rows("guardrail_holds", what="read guardrail holds")
        return {Send(r["campaign"], r["from_domain"], r["provider"]): r["state"] for r in rows}

    async def judge_guardrail(
        self,
        send: Send,
        now: datetime,
        *,
        judged_in: str,
        level: str,
        reason: str,
        new_state: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> bool:
        """Record a judgement (and a new state); False when the row changed meanwhile."""
        row = await self._row(
            "judge_guardrail",
            send.campaign,
            send.from_domain,
            send.provider,
            now,
            level,
            reason,
            new_state,
            evidence,
            judged_in,
            what="record a guardrail judgement",
        )
        return row is not None

    async def wake_held(self, send: Send, now: datetime) -> int:
        status = await self._status(
            "wake_held", send.campaign, send.from_domain, now, what="wake held deliveries"
        )
        return int(status.split()[-1])

    async def release_guardrail(
        self, send: Send, now: datetime, actor: str, reason: str, baseline: SendCounts
    ) -> bool:
        """Release a paused send (audited); False when it was not paused."""
        async with self._transaction("release a guardrail") as tx:
            row = await tx.row(
                "release_guardrail",
                send.campaign,
                send.from_domain,
                send.provider,
                now,
                actor,
                reason,
                asdict(baseline),
            )
            if row is None:
                return False
            await tx.status("wake_held", send.campaign, send.from_domain, now)
        return True

    async def list_guardrails(
        self, states: Sequence[str] | None = None, limit: int = 500
    ) -> list[GuardrailRow]:
        rows = await self._rows(
            "list_guardrails",
            None if states is None else list(states),
            limit,
            what="list guardrails",
        )
        return [_row(r) for r in rows]

    async def guardrail(self, send: Send) -> GuardrailRow | None:
        r = await self._row(
            "guardrail",
            send.campaign,
            send.from_domain,
            send.provider,
            what="read a guardrail",
        )
        return None if r is None else _row(r)
