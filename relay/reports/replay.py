"""``bounce-relay classify --replay``: recorded bounces judged again by another rule set.

Each soft or hard bounce recorded in a period goes through ``policies.verdict``
once more, with the rules to try and the bounce's own circumstances: its reply,
its attempt number, its delivery's first failure, and its time as *now*. What
comes out is compared with what was recorded then:

========  ======================================================================
field     a change is
========  ======================================================================
kind      hard <-> soft
category  another category
suppress  the verdict would (not) suppress; not compared for events written
          before 0006, which did not record it (NULL)
timing    both soft (from an SMTP session) and: another retry rule, or the
          delivery would now give up instead of being retried (or the other way
          round), or the delay differs by more than a second and the new rule's
          backoff is not random (random delays differ on every run). Events
          written before 0006 did not record the delay: only the rule is compared
========  ======================================================================

A bounce read from a bounce message (``source = 'dsn'``) is decided as a
reported result (``policies.verdict.Reported``): the remote system retries itself, so there is no
timing to compare. Random backoffs are replayed with the jitter fixed at 0.5.

A bounce an open incident deferred, or one ``confirm_hard`` held on probation,
was not decided by the rules alone; it is counted apart and never listed as a
change of the rules.

``replay_bounce`` and ``Tally`` are pure; ``run_replay`` reads the store and
writes the output (a table, or JSON lines with ``--jsonl``), summary last. Replies and
addresses are remote data: the table shows them through ``policies.text.printable`` and
the JSON lines go through ``terminal_json``, so no control or bidi character reaches the
terminal raw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TextIO

from policies.addresses import domain_of
from policies.outcome import Decision, ReportedDecision
from policies.retry import Backoff, format_duration
from policies.smtp_reply import Reply
from policies.states import EventType
from policies.text import printable, terminal_json
from policies.verdict import Attempt, NotJudged, Reported, verdict
from relay.config import Rules, parse_duration
from relay.store import RecordedBounce, Store

__all__ = [
    "Change",
    "Field",
    "ReplayError",
    "Replayed",
    "Tally",
    "Timing",
    "parse_when",
    "replay_bounce",
    "run_replay",
]

JITTER = 0.5  # the random backoff's jitter used in a replay (the recorded one is not kept)
TOLERANCE = timedelta(seconds=1)  # the recorded delay is short by the time the apply took
_REPLY_WIDTH = 48
_RECIPIENT_WIDTH = 28
_PROGRESS_EVERY = 50_000


class ReplayError(ValueError):
    """A replay option the command cannot honour; the message says which and why."""


class Field(StrEnum):
    KIND = "kind"
    CATEGORY = "category"
    SUPPRESS = "suppress"
    TIMING = "timing"


@dataclass(frozen=True)
class Timing:
    """When a soft bounce is tried again: the retry rule, and the delay or giving up.
    ``gives_up`` None: not recorded (before 0006), only the rule is known."""

    rule: str | None
    gives_up: bool | None = None
    retry_after: timedelta | None = None

    def __str__(self) -> str:
        rule = self.rule or "?"
        if self.gives_up is None:
            return rule
        if self.gives_up or self.retry_after is None:
            return f"{rule}, gives up"
        seconds = round(self.retry_after.total_seconds())
        return f"{rule}, retry in {format_duration(timedelta(seconds=seconds))}"

    def as_json(self) -> dict[str, Any]:
        after = None if self.retry_after is None else round(self.retry_after.total_seconds())
        return {"rule": self.rule, "gives_up": self.gives_up, "retry_after_seconds": after}


Value = str | bool | Timing | None


@dataclass(frozen=True)
class Change:
    field: Field
    old: Value
    new: Value

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.old)} → {_show(self.new)}"


@dataclass(frozen=True)
class Replayed:
    """One recorded bounce and what would change; ``shaped_by`` names what besides the
    rules decided it then ("incident", "confirm_hard"): such a bounce is not compared."""

    bounce: RecordedBounce
    changes: tuple[Change, ...] = ()
    shaped_by: str | None = None


@dataclass(frozen=True)
class _Outcome:
    kind: str
    category: str | None
    suppress: bool | None
    timing: Timing | None = None
    random_backoff: bool = False
    spread: float = 0.0  # the rule's spread: a delay may be up to this share longer


def replay_bounce(bounce: RecordedBounce, rules: Rules) -> Replayed:
    """What ``rules`` would decide for ``bounce``, compared with what was recorded."""
    shaped_by = _shaped_by(bounce)
    if shaped_by is not None:
        return Replayed(bounce, shaped_by=shaped_by)
    old = _recorded(bounce)
    new = _decided(bounce, rules)
    changes: list[Change] = []
    if old.kind != new.kind:
        changes.append(Change(Field.KIND, old.kind, new.kind))
    if old.category != new.category:
        changes.append(Change(Field.CATEGORY, old.category, new.category))
    if old.suppress is not None and new.suppress is not None and old.suppress != new.suppress:
        changes.append(Change(Field.SUPPRESS, old.suppress, new.suppress))
    if old.timing and new.timing and _timing_changed(old.timing, new.timing, new):
        changes.append(Change(Field.TIMING, old.timing, new.timing))
    return Replayed(bounce, tuple(changes))


def _shaped_by(bounce: RecordedBounce) -> str | None:
    if bounce.incident_id is not None:
        return "incident"
    if (bounce.rule or "").startswith("confirm_hard"):
        return "confirm_hard"
    return None


def _recorded(bounce: RecordedBounce) -> _Outcome:
    kind = "hard" if bounce.type == EventType.HARD_BOUNCE else "soft"
    timing = None
    if kind == "soft" and bounce.source == "smtp":
        if bounce.suppress is None:  # before 0006: neither the delay nor giving up was kept
            timing = Timing(bounce.rule)
        elif bounce.retry_at is None:
            timing = Timing(bounce.rule, gives_up=True)
        else:
            timing = Timing(bounce.rule, False, bounce.retry_at - bounce.occurred_at)
    return _Outcome(kind, bounce.category, bounce.suppress, timing)


def judged_again(
    bounce: RecordedBounce, rules: Rules
) -> Decision | ReportedDecision | NotJudged | None:
    """The verdict ``rules`` give a recorded bounce today, with its own circumstances (its
    reply, attempt, first failure, and its time as now): replay and the admin's profile
    page ask this."""
    reply = Reply(
        code=bounce.code or 0,
        enhanced=bounce.enhanced,
        text=bounce.reply_text or "",
        synthetic=bounce.synthetic,
    )
    domain = bounce.recipient_domain or domain_of(bounce.recipient or "")
    if bounce.source == "dsn" or bounce.type == EventType.COMPLAINT:
        action = "complaint" if bounce.type == EventType.COMPLAINT else bounce.dsn_action
        action = action if action in ("failed", "delayed", "complaint") else "failed"
        has_status = bool(reply.code or reply.enhanced) or action == "complaint"
        reported = Reported(action, domain, reply.text, has_status=has_status)
        return verdict(reply, reported, rules)
    first_failure = bounce.first_failure_at
    if first_failure is not None and first_failure > bounce.occurred_at:
        first_failure = None  # a later first failure is not this attempt's
    facts = Attempt(
        domain,
        bounce.occurred_at,
        attempt=max(bounce.attempt or 1, 1),
        first_failure_at=first_failure,
        jitter=JITTER,
    )
    return verdict(reply, facts, rules)


def _decided(bounce: RecordedBounce, rules: Rules) -> _Outcome:
    decision = judged_again(bounce, rules)
    if decision is None:
        return _Outcome("delivered", None, False)
    if isinstance(decision, NotJudged):
        return _Outcome("not judged", None, None)
    if isinstance(decision, ReportedDecision):
        return _Outcome(_KINDS[decision.event], decision.verdict.category.value, decision.suppress)
    kind = _KINDS[decision.event]
    if kind != "soft" or decision.retry_rule is None:
        return _Outcome(kind, decision.verdict.category.value, decision.suppress)
    at = decision.next_attempt_at
    after = None if at is None else at - bounce.occurred_at
    timing = Timing(decision.rule, decision.non_delivery, after)
    return _Outcome(
        kind,
        decision.verdict.category.value,
        decision.suppress,
        timing,
        decision.retry_rule.backoff is Backoff.RANDOM,
        decision.retry_rule.spread,
    )


_KINDS = {
    EventType.HARD_BOUNCE: "hard",
    EventType.SOFT_BOUNCE: "soft",
    EventType.DELIVERED: "delivered",
    EventType.COMPLAINT: "complaint",
}


def _timing_changed(old: Timing, new: Timing, outcome: _Outcome) -> bool:
    if old.rule != new.rule:
        return True
    if old.gives_up is None:  # not recorded: the rule is all there is to compare
        return False
    if old.gives_up != new.gives_up:
        return True
    if old.retry_after is None or new.retry_after is None or outcome.random_backoff:
        return False
    # A spread delay was stretched by a random share of up to ``spread``: only a difference
    # beyond that range is a change of timing.
    return abs(old.retry_after - new.retry_after) > TOLERANCE + new.retry_after * outcome.spread


@dataclass
class Tally:
    """The summary: bounces replayed and changed, changes per field, the addresses the
    changed bounces would newly suppress or no longer suppress, and the bounces an incident
    or confirm_hard shaped (not compared)."""

    replayed: int = 0
    changed: int = 0
    fields: Counter[str] = field(default_factory=Counter)
    not_compared: Counter[str] = field(default_factory=Counter)
    _suppressing: set[str] = field(default_factory=set)
    _releasing: set[str] = field(default_factory=set)

    def add(self, replayed: Replayed) -> None:
        self.replayed += 1
        if replayed.shaped_by is not None:
            self.not_compared[replayed.shaped_by] += 1
        if not replayed.changes:
            return
        self.changed += 1
        for change in replayed.changes:
            self.fields[change.field] += 1
            if change.field is Field.SUPPRESS:
                target = self._suppressing if change.new else self._releasing
                target.add(replayed.bounce.recipient or "")

    @property
    def newly_suppressed(self) -> int:
        """Addresses a changed bounce would now suppress and none would release (an address
        one bounce releases and another suppresses stays suppressed)."""
        return len(self._suppressing - self._releasing)

    @property
    def no_longer_suppressed(self) -> int:
        return len(self._releasing - self._suppressing)

    def line(self) -> str:
        per_field = ", ".join(f"{f} {self.fields[f]}" for f in Field)
        return (
            f"replayed {self.replayed} bounce(s), {self.changed} changed ({per_field}); "
            f"addresses newly suppressed {self.newly_suppressed}, "
            f"no longer suppressed {self.no_longer_suppressed}; not compared: "
            f"{self.not_compared['incident']} deferred by an incident, "
            f"{self.not_compared['confirm_hard']} held by confirm_hard"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "changed": self.changed,
            "changes": {f.value: self.fields[f] for f in Field},
            "newly_suppressed": self.newly_suppressed,
            "no_longer_suppressed": self.no_longer_suppressed,
            "not_compared": {k: self.not_compared[k] for k in ("incident", "confirm_hard")},
        }


def parse_when(value: str, now: datetime, option: str) -> datetime:
    """``7d``/``12h``/``30m`` back from ``now``, or an ISO date or time (UTC without an
    offset); ``ReplayError`` names the option."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ReplayError(
            f"{option} {value!r} is neither a duration back from now (7d, 12h, 30m) nor an "
            "ISO date or time (2026-11-01, 2026-11-01T08:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def run_replay(
    store: Store,
    rules: Rules,
    since: datetime,
    until: datetime,
    out: TextIO,
    *,
    as_jsonl: bool = False,
    progress: TextIO | None = None,
) -> Tally:
    """Replay [since, until) with ``rules``: one line per changed bounce on ``out`` (a table,
    or JSON lines), then the summary line. Progress goes to ``progress`` when it is a
    terminal."""
    tally = Tally()
    bounces: AsyncIterable[RecordedBounce] = store.iter_recorded_bounces(since, until)
    show_progress = progress is not None and progress.isatty()
    async for bounce in bounces:
        replayed = replay_bounce(bounce, rules)
        tally.add(replayed)
        if replayed.changes:
            if as_jsonl:
                print(terminal_json(_json_row(replayed), ensure_ascii=False), file=out)
            else:
                if tally.changed == 1:
                    print(_HEADER, file=out)
                print(_table_row(replayed), file=out)
        if show_progress and progress and tally.replayed % _PROGRESS_EVERY == 0:
            progress.write(f"\r{tally.replayed:,} bounces replayed")
            progress.flush()
    if show_progress and progress and tally.replayed >= _PROGRESS_EVERY:
        progress.write("\n")
    period = {"since": _iso(since), "until": _iso(until)}
    if as_jsonl:
        print(terminal_json({"summary": {**period, **tally.as_json()}}), file=out)
    else:
        print(f"{period['since']} to {period['until']}: {tally.line()}", file=out)
    return tally


_HEADER = (
    f"{'time (UTC)':19}  {'recipient':{_RECIPIENT_WIDTH}}  code  {'reply':{_REPLY_WIDTH}}  changes"
)


def _table_row(replayed: Replayed) -> str:
    b = replayed.bounce
    when = b.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    code = str(b.code) if b.code else "-"
    changes = printable("; ".join(str(c) for c in replayed.changes))
    recipient = printable(b.recipient or "")
    reply = _trim(_first_line(b.reply_text), _REPLY_WIDTH)
    return f"{when}  {recipient:{_RECIPIENT_WIDTH}}  {code:4}  {reply:{_REPLY_WIDTH}}  {changes}"


def _json_row(replayed: Replayed) -> dict[str, Any]:
    b = replayed.bounce
    return {
        "event_id": b.id,
        "occurred_at": _iso(b.occurred_at),
        "recipient": b.recipient,
        "source": b.source,
        "code": b.code,
        "enhanced": b.enhanced,
        "reply": b.reply_text,
        "changes": {
            c.field.value: {"old": _json_value(c.old), "new": _json_value(c.new)}
            for c in replayed.changes
        },
    }


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def _json_value(value: Value) -> Any:
    return value.as_json() if isinstance(value, Timing) else value


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _trim(text: str, width: int) -> str:
    # Runs of spaces (and tabs) become one: the table is aligned by spaces, not tabs.
    return printable(" ".join(text.split()), width)
