"""Bounce messages mailed back to the DSN domain: read them, never relay them.

A delivery sent with a VERP return path (``policies.verp``) that bounces
later comes back here as a DSN, a non-standard bounce or a feedback report.
Each recipient result takes the path a synchronous reply takes (classify,
bounce record, suppression, profile) through ``policies.outcome.decide_reported``
and one store transaction. Only a verified return path names a delivery, and
only that delivery's recipient can be affected, so a forged bounce suppresses
nobody. Whatever cannot be used is dropped with a ``dsn_unmatched`` event that
says why; the sender still gets 250 (a bounce must not bounce).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from policies.addresses import domain_of, normalise_address
from policies.dsn import (
    BounceRecipient,
    MalformedBounce,
    NotAMessage,
    ParsedBounce,
    parse_bounce,
)
from policies.outcome import decide_reported
from policies.templates import template_of
from policies.verp import ReturnPaths
from relay.clock import Clock, utc_now
from relay.config import Rules
from relay.metrics import Metrics
from relay.store import DsnRecord, Store

__all__ = ["BounceReader", "Unmatched"]

log = structlog.get_logger("relay.bounces")


@dataclass(frozen=True)
class Unmatched:
    """Why a bounce message (or one of its recipients) was dropped."""

    reason: str


class BounceReader:
    def __init__(
        self,
        store: Store,
        return_paths: ReturnPaths,
        rules: Callable[[], Rules],
        *,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.return_paths = return_paths
        self.rules = rules
        self.clock = clock
        self.metrics = metrics or Metrics()

    def is_bounce_address(self, address: str) -> bool:
        return self.return_paths.is_ours(address)

    async def read(self, raw: bytes, sender: str, rcpt_tos: list[str], peer: str) -> None:
        """Apply one bounce message sent to ``rcpt_tos`` (addresses at the DSN domain).

        Raises ``StoreError`` when nothing could be recorded: the caller answers 451 and
        the sender tries again later.
        """
        parsed = _parse(raw)
        records: list[DsnRecord] = []
        for rcpt in rcpt_tos:
            with structlog.contextvars.bound_contextvars(bounce_rcpt=rcpt):
                outcome = (
                    parsed if isinstance(parsed, Unmatched) else await self._records(parsed, rcpt)
                )
            if isinstance(outcome, Unmatched):
                await self._unmatched(outcome, raw, sender, rcpt, peer, parsed)
            else:
                records.extend(outcome)
        if not records:
            return
        applied = await self.store.apply_dsn_results(
            self.clock(), records, cancel_queued=not self.rules().dry_run
        )
        for record in records:
            self.metrics.bounce_messages.labels(record.event).inc()
        log.info(
            "dsn.applied",
            results=len(records),
            recorded=applied.recorded,
            repeated=applied.skipped,
            suppressed=applied.suppressed,
            cancelled=applied.cancelled,
        )

    async def _records(self, parsed: ParsedBounce, rcpt: str) -> list[DsnRecord] | Unmatched:
        delivery_id = self.return_paths.delivery_of(rcpt)
        if delivery_id is None:
            # A feedback loop or a forwarded bounce may reach another address at the DSN
            # domain; the returned headers then still carry the signed return path.
            delivery_id = self.return_paths.find_delivery(parsed.returned_headers)
        if delivery_id is None:
            return Unmatched("no valid return path token (missing, forged or mangled)")
        delivery = await self.store.delivery_by_id(delivery_id)
        if delivery is None:
            return Unmatched(f"delivery {delivery_id} no longer exists")
        key: str = delivery["recipient_key"]
        results = _results_for(parsed, key)
        if not results:
            return Unmatched("the bounce reports no failure for the delivery's recipient")
        rules = self.rules()
        records = []
        for result in results:
            if result.action in ("failed", "delayed") and not (result.status or result.code):
                return Unmatched("no parsable status for the delivery's recipient")
            reply = result.reply()
            decision = decide_reported(
                result.action,
                reply,
                domain_of(key),
                classify_rules=rules.classify_rules,
                suppress_on=rules.suppress_on,
            )
            if decision is None:
                continue
            text = _bounce_text(result)
            log.info(
                "dsn.result",
                delivery_id=delivery_id,
                recipient=key,
                action=result.action,
                status=result.status,
                category=decision.verdict.category.value,
                recorded_as=decision.event.value,
                suppress=decision.suppress,
                remote_mta=result.remote_mta,
            )
            records.append(
                DsnRecord(
                    delivery_id=delivery_id,
                    event=decision.event.value,
                    finish_state=decision.finish_state.value if decision.finish_state else None,
                    non_delivery=decision.non_delivery,
                    suppress=decision.suppress,
                    suppress_reason=f"{decision.verdict.category.value}: {text[:200]}",
                    code=reply.code or None,
                    enhanced=reply.enhanced,
                    reply_text=text,
                    template=template_of(text) if result.action != "complaint" else None,
                    category=decision.verdict.category.value,
                    rule=decision.verdict.rule,
                    destination=result.remote_mta,
                    detail=_detail(parsed, result),
                )
            )
        return records or Unmatched("the bounce reports only successful deliveries")

    async def _unmatched(
        self,
        why: Unmatched,
        raw: bytes,
        sender: str,
        rcpt: str,
        peer: str,
        parsed: ParsedBounce | Unmatched,
    ) -> None:
        self.metrics.bounce_messages.labels("dsn_unmatched").inc()
        log.warning(
            "dsn.unmatched",
            reason=why.reason,
            sender=sender,
            size=len(raw),
            action="dropped; nothing suppressed on its word",
        )
        detail: dict[str, Any] = {
            "reason": why.reason,
            "peer": peer,
            "size": len(raw),
            "subject": _subject(raw),
        }
        if isinstance(parsed, ParsedBounce):
            detail["format"] = parsed.format
            detail["recipients"] = [r.recipient for r in parsed.recipients][:20]
        await self.store.record_dsn_unmatched(self.clock(), sender, rcpt, why.reason, detail)


def _parse(raw: bytes) -> ParsedBounce | Unmatched:
    try:
        parsed = parse_bounce(raw)
    except NotAMessage as exc:
        return Unmatched(f"not a mail message: {exc}")
    except MalformedBounce as exc:
        return Unmatched(f"malformed bounce: {exc}")
    if parsed is None:
        return Unmatched("not recognisable as a bounce or feedback report")
    if parsed.loop:
        return Unmatched("a bounce of a bounce (loop)")
    return parsed


def _results_for(parsed: ParsedBounce, key: str) -> list[BounceRecipient]:
    """The results about the delivery's recipient: those naming it, else the only one there
    is (a forwarder may have rewritten the address; the return path already names the
    delivery)."""
    mine = [r for r in parsed.recipients if r.recipient and _same_address(r.recipient, key)]
    if mine:
        return mine
    if len(parsed.recipients) == 1:
        return list(parsed.recipients)
    return []


def _same_address(address: str, key: str) -> bool:
    try:
        return normalise_address(address) == key
    except ValueError:
        return False


def _bounce_text(result: BounceRecipient) -> str:
    """What the report shows: the remote's own words (the status when it gave none)."""
    if result.action == "complaint":
        return f"feedback report: {result.feedback_type or 'unspecified'}"
    return result.diagnostic or result.status or result.action


def _detail(parsed: ParsedBounce, result: BounceRecipient) -> dict[str, Any]:
    return {
        "format": parsed.format,
        "action": result.action,
        "status": result.status,
        "reported_recipient": result.recipient,
        "remote_mta": result.remote_mta,
        "feedback_type": result.feedback_type,
    }


def _subject(raw: bytes) -> str:
    head = raw[:8192].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in head.splitlines():
        if line[:8].lower() == b"subject:":
            return line[8:].strip().decode("utf-8", "replace")[:200]
    return ""
