"""Proof of agreement (issue 18): the simulator decides exactly what the running relay records.

`bounce-relay classify` and `bounce-relay dsn parse` answer "what would the relay do with
this?"; the answer is only worth having if a running relay then records just that. Each test
here drives a real relay (in-process, real PostgreSQL, real SMTP on loopback, the injected
clock) with every item of a real corpus, runs the simulator once over the same items with
the same config file, and compares field by field. Every disagreement is listed at once.

- Replies (``tests/policies/data/smtp-replies.jsonl``, 307 real upstream replies): a scripted
  upstream answers the RCPT of recipient i with reply i as written.
- Bounce messages (``tests/policies/data/dsn/``, 278 real DSNs, non-standard bounces and
  feedback reports): each is mailed back to the signed return paths of deliveries to the
  recipients it reports.

(Both corpora are the copies of shared/data kept in the repository, so CI has them.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import asyncpg
import pytest

from policies.addresses import AddressError, normalise_address
from policies.retry import Backoff
from relay.config import Config, load_config
from relay.ops.app import Relay
from tests.support.delivery import BODY, eventually, send
from tests.support.scripted import FakeClock, ScriptedUpstream

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "policies" / "data"
REPLIES = DATA / "smtp-replies.jsonl"
BOUNCES = DATA / "dsn"

# The recipient domain of a reply from this provider, so that what keys on the domain (the
# classify rule below, the throttle a provider hint slows) applies as in real life.
PROVIDER_DOMAINS = {
    "gmail": "gmail.com",
    "yahoo": "yahoo.com",
    "outlook_com": "outlook.com",
    "exchange_online": "outlook.com",
    "icloud": "icloud.com",
}
OTHER_DOMAIN = "example.com"

T = TypeVar("T")

# Replies that cannot cross the wire as written. The relay then records what it saw instead
# (a synthetic reply of its own), never the words of the corpus; the test asserts that
# exactly these ids end so, with these words in the recorded text.
_NO_REPLY_CODE = (
    "no reply code: an MTA's own words (DNS or connection failure), not an SMTP reply; "
    "on the wire the line is malformed, and the relay records a protocol error"
)
_JOINED = (
    "Postfix joined the lines into one that still opens with 'NNN-': on the wire it "
    "announces lines that never come, and the relay waits out command_timeout"
)
WIRE_BROKEN: dict[str, tuple[str, str]] = {
    **{
        reply_id: (_NO_REPLY_CODE, "protocol error")
        for reply_id in (
            "r0078",
            "r0079",
            "r0080",
            "r0081",
            "r0082",
            "r0261",
            "r0262",
            "r0263",
        )
    },
    **{
        reply_id: (_JOINED, "timed out")
        for reply_id in (
            "r0003",
            "r0050",
            "r0083",
            "r0084",
            "r0103",
            "r0116",
            "r0118",
            "r0119",
            "r0120",
            "r0149",
            "r0165",
            "r0177",
            "r0178",
            "r0179",
            "r0180",
            "r0192",
            "r0197",
            "r0213",
            "r0214",
            "r0215",
            "r0276",
            "x0019",
            "x0036",
        )
    },
}


def relay_config(port: int, extra: str = "", command_timeout: str = "10s") -> str:
    """Everything to the scripted upstream; rules of each kind a verdict reads (retry
    rules by category and by enhanced code, one with a random backoff, a classify rule
    keyed on a domain)."""
    return f"""
    [smtp]
    listen = "127.0.0.1:0"
    hostname = "relay.test"

    [[pools]]
    name = "default"
    source_ips = ["127.0.0.1"]

    [[routes]]
    domains = ["*"]
    mode = "static"
    hosts = ["127.0.0.1:{port}"]

    [retry]
    schedule = ["1m", "5m"]
    spread = 0  # exact retry times
    max_age = "1d"

    # Every reply of the corpus is sent, most of them refusals: a guardrail would pause the
    # campaign after its canary. The verdicts are under test here, not the guardrails.
    [guardrails]
    enabled = false

    [[retry.rules]]
    name = "greylisting"
    match = {{ category = ["greylisted"] }}
    schedule = ["30s"]
    max_attempts = 4

    [[retry.rules]]
    name = "routing-trouble"
    match = {{ enhanced = ["4.4.3"] }}
    schedule = ["10m"]

    [[retry.rules]]
    name = "oversized"
    match = {{ category = ["message_too_large"] }}
    interval = "2h"
    backoff = "random"

    [[classify.rules]]
    name = "yahoo-dd-gone"
    match = {{ domain = ["yahoo.com"], text = "delivery error: dd " }}
    kind = "hard"
    category = "user_unknown"
    suppress = true

    [admin]
    listen = "127.0.0.1:0"

    [delivery]
    # One claim, one transaction for a message to every recipient (see _drive_replies).
    concurrency = 500
    batch = 500
    # The replies that hang a session wait out their timeouts side by side.
    connections_per_destination = 50
    connect_timeout = "5s"
    command_timeout = "{command_timeout}"
    {extra}
    """


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


async def simulate(*args: str, stdin: str | None = None) -> str:
    """``bounce-relay ARGS`` in a subprocess, without holding up the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), timeout=120
    )
    assert process.returncode == 0, err.decode()
    return out.decode()


def _report(what: str, problems: Sequence[str]) -> str:
    return f"{len(problems)} disagreement(s) between the relay and {what}:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- replies


def _recipient(reply: dict[str, Any]) -> str:
    return f"{reply['id']}@{PROVIDER_DOMAINS.get(reply['provider'], OTHER_DOMAIN)}"


def _on_the_wire(reply: str) -> str:
    """The reply as an upstream writes it: each line its own CRLF-ended line."""
    return "\r\n".join(reply.split("\n"))


def _random_delay(config: Config, rule: str | None) -> bool:
    """Whether the retry rule of that name picks its delays at random (a provider hint's
    name is no retry rule: its delay is exact)."""
    retry = config.rules.retry
    found = {r.name: r for r in (retry.default, *retry.rules)}.get(rule or "")
    return found is not None and (found.backoff is Backoff.RANDOM or found.spread > 0)


async def _verdicts(db: asyncpg.Connection, recipients: list[str]) -> dict[str, dict[str, Any]]:
    """Once every recipient has it, the event of its verdict (exactly one: nothing is
    retried) with its delivery's state at that moment."""
    query = """
        SELECT e.recipient, e.type, e.category, e.rule, e.suppress, e.template, e.retry_at,
               e.occurred_at, e.synthetic, e.reply_text, d.state
        FROM events e JOIN deliveries d ON d.id = e.delivery_id
        WHERE e.recipient = ANY($1::text[])
          AND e.type IN ('delivered', 'soft_bounce', 'hard_bounce')
    """

    async def all_decided() -> bool:
        count = await db.fetchval(
            "SELECT count(DISTINCT recipient) FROM events WHERE recipient = ANY($1::text[])"
            " AND type IN ('delivered', 'soft_bounce', 'hard_bounce')",
            recipients,
        )
        return bool(count == len(recipients))

    await eventually(all_decided, timeout=60)
    rows = await db.fetch(query, recipients)
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["recipient"] not in found, f"{row['recipient']}: more than one verdict"
        found[row["recipient"]] = dict(row)
    return found


async def _purge_queued(relay: Relay, db: asyncpg.Connection) -> None:
    """Cancel what waits for a retry (as `bounce-relay queue purge` does), so that moving
    the clock on tries nothing again."""
    for delivery_id in await db.fetchval(
        "SELECT coalesce(array_agg(id), '{}') FROM deliveries WHERE state = 'queued'"
    ):
        assert await relay.store.purge_delivery(delivery_id, "test", "verdict recorded")


async def _drive_replies(
    relay: Relay, db: asyncpg.Connection, clock: FakeClock, replies: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Every reply through the relay; the first verdict recorded for each reply's id.

    Whatever ends a transaction early (a protocol error, a timeout, a 421, after which
    the client closes the connection) ends it for each of its recipients, so such replies
    go in transactions of their own; all the others share one. A provider hint in a reply
    may pause the recipient domain (the relay's throttle): the clock moves a day on
    before each later transaction, so none is held back untried.
    """
    broken = [r for r in replies if r["id"] in WIRE_BROKEN]
    closing = [r for r in replies if r["id"] not in WIRE_BROKEN and r["reply"][:3] == "421"]
    together = [r for r in replies if r not in broken and r not in closing]
    recorded: dict[str, dict[str, Any]] = {}

    await asyncio.gather(*(send(relay, [_recipient(r)]) for r in broken))
    recorded |= await _verdicts(db, [_recipient(r) for r in broken])
    await _purge_queued(relay, db)
    for reply in closing:
        clock.advance(days=1)
        await send(relay, [_recipient(reply)])
        recorded |= await _verdicts(db, [_recipient(reply)])
        await _purge_queued(relay, db)
    clock.advance(days=1)
    await send(relay, [_recipient(r) for r in together])
    recorded |= await _verdicts(db, [_recipient(r) for r in together])
    return {r["id"]: recorded[_recipient(r)] for r in replies}


def _reply_problems(
    reply_id: str, got: dict[str, Any], want: dict[str, Any], config: Config
) -> tuple[list[str], bool]:
    """The fields in which the relay's record and classify's answer differ; and whether
    the retry delays were compared."""
    relay_view = {
        "event": got["type"],
        "state": got["state"],
        "category": got["category"],
        "suppress": got["suppress"],
        "rule": got["rule"],
        "template": got["template"],
    }
    problems = [
        f"{reply_id}: {field}: relay {value!r}, classify {want[field]!r}"
        for field, value in relay_view.items()
        if value != want[field]
    ]
    relay_delay = (
        round((got["retry_at"] - got["occurred_at"]).total_seconds())
        if got["retry_at"] is not None
        else None
    )
    simulated_delay = (
        round(
            (
                datetime.fromisoformat(want["next_attempt_at"])
                - datetime.fromisoformat(want["decided_at"])
            ).total_seconds()
        )
        if want["next_attempt_at"] is not None
        else None
    )
    if (relay_delay is None) != (simulated_delay is None):
        problems.append(
            f"{reply_id}: retry delay: relay {relay_delay!r} s, classify {simulated_delay!r} s"
        )
        return problems, False
    if relay_delay is None or _random_delay(config, want["rule"]):
        return problems, False
    if relay_delay != simulated_delay:
        problems.append(
            f"{reply_id}: retry delay: relay {relay_delay} s, classify {simulated_delay} s"
        )
    return problems, True


@pytest.mark.slow
async def test_every_real_reply_is_recorded_as_classify_decides_it(
    db_dsn: str, write_config: Callable[..., Path], db: asyncpg.Connection
) -> None:
    replies = [json.loads(line) for line in REPLIES.read_text("utf-8").splitlines() if line]
    assert len({r["id"] for r in replies}) == len(replies) == 307
    assert set(WIRE_BROKEN) <= {r["id"] for r in replies}
    clock = FakeClock()
    async with ScriptedUpstream() as upstream:
        # A short command_timeout: the joined replies of WIRE_BROKEN wait it out.
        path = write_config(relay_config(upstream.port, command_timeout="3s"), replace_base=True)
        config = load_config(path)
        pairs = "".join(
            json.dumps({"reply": r["reply"], "domain": _recipient(r).partition("@")[2]}) + "\n"
            for r in replies
        )
        classified = [
            json.loads(line)
            for line in (await simulate("classify", "--jsonl", "--config", str(path), stdin=pairs))
            .strip()
            .splitlines()
        ]
        assert [c["reply"] for c in classified] == [r["reply"] for r in replies]
        for reply in replies:
            upstream.on_rcpt(_recipient(reply), _on_the_wire(reply["reply"]))
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=clock) as relay:
            recorded = await _drive_replies(relay, db, clock, replies)

    problems: list[str] = []
    synthetic = {reply_id for reply_id, got in recorded.items() if got["synthetic"]}
    if synthetic != set(WIRE_BROKEN):
        problems.append(
            f"relay's own (synthetic) replies for {sorted(synthetic)}, "
            f"expected exactly for {sorted(WIRE_BROKEN)}"
        )
    for reply_id, (why, words) in WIRE_BROKEN.items():
        text = recorded[reply_id]["reply_text"]
        if words not in text:
            problems.append(f"{reply_id}: {why}; but the relay recorded {text!r}")
    delays_compared = 0
    for reply, want in zip(replies, classified, strict=True):
        if reply["id"] in WIRE_BROKEN:
            continue
        found, compared = _reply_problems(reply["id"], recorded[reply["id"]], want, config)
        problems += found
        delays_compared += compared
    assert delays_compared > 0, "no retry delay was compared"
    if problems:
        pytest.fail(_report("`bounce-relay classify`", problems))


# --------------------------------------------------------------------------- bounces

DSN_CONFIG = """
    [dsn]
    domain = "bounce.relay.test"
    secret = "0123456789abcdef-test-secret"
    # Every file that records nothing is kept as unmatched: none of them may be refused.
    max_unmatched_per_client = 1000

    # The corpus' recipients are mailed as they are (nekonyaan@gmal.com among them): the
    # verdicts are under test here, not the RCPT typo check.
    [recipients]
    typo = "off"
"""
BOUNCE_EVENTS = ("hard_bounce", "soft_bounce", "complaint")

# Bounce messages whose only result names no deliverable recipient. The relay applies the
# only result of a bounce to the delivery its signed return path names (a forwarder may have
# rewritten the address), so a delivery to a stand-in address receives it.
UNNAMED_RECIPIENT = frozenset(
    {
        "arf-12.eml",
        "lhost-imailserver-06.eml",
        "lhost-postfix-64.eml",
        "lhost-qmail-08.eml",
        "lhost-x3-02.eml",
        "rhost-franceptt-04.eml",
    }
)
# ... or names something the relay refuses at RCPT (a pipe, a file, a local part with
# broken quoting); the test asserts it refuses exactly these. (It takes the source route of
# lhost-messagingserver-02.eml, "@smtp.example.net:kijitora@server", as kijitora@server.)
REFUSED_RECIPIENT = frozenset({"lhost-exim-44.eml", "lhost-exim-60.eml", "lhost-postfix-32.eml"})
# Bounce messages that cannot be mailed as written: a line longer than SMTP allows (1000
# octets with its CRLF, RFC 5321 4.5.3.1.6), which the relay's intake refuses with 500, as it
# may. They record nothing; the test asserts exactly these are refused so.
LINE_TOO_LONG = frozenset(
    {"lhost-amazonses-10.eml", "lhost-amazonses-12.eml", "lhost-gmx-02.eml", "lhost-gmx-04.eml"}
)


@dataclass
class BounceCase:
    """One bounce message, `dsn parse`'s lines about it, and the deliveries it is about."""

    file: Path
    lines: list[dict[str, Any]]
    # One delivery per recipient the lines name, to that address; or one to a stand-in
    # (UNNAMED_RECIPIENT, REFUSED_RECIPIENT), also for a file with no result at all: it is
    # mailed back too, to show that it records nothing.
    recipients: list[str]
    stand_in: bool = False
    queue_id: str = ""
    deliveries: dict[str, int] = field(default_factory=dict)  # by recipient key

    @classmethod
    def of(cls, file: Path, lines: list[dict[str, Any]]) -> BounceCase:
        named = list(dict.fromkeys(line["recipient"] for line in lines if line["recipient"]))
        if named:
            return cls(file, lines, named)
        return cls(file, lines, [_stand_in(file)], stand_in=True)

    def about(self) -> list[tuple[str, int, list[dict[str, Any]]]]:
        """(recipient, its delivery, the lines about it) for each delivery."""
        return [
            (
                recipient,
                _delivery_to(self.deliveries, recipient),
                self.lines
                if self.stand_in
                else [line for line in self.lines if line["recipient"] == recipient],
            )
            for recipient in self.recipients
        ]


def _stand_in(file: Path) -> str:
    return f"{file.stem}@stand-in.example.net"


def _delivery_to(deliveries: dict[str, int], recipient: str) -> int:
    """The delivery of a message (its deliveries by recipient key) to ``recipient``; the
    only one there is when the relay keyed the address otherwise (it drops a source route
    such as "@relay.example:user@host", RFC 5321 4.1.1.3)."""
    try:
        return deliveries[normalise_address(recipient)]
    except (AddressError, KeyError):
        [only] = deliveries.values()
        return only


async def _send_message(port: int, recipients: Sequence[str]) -> tuple[str, list[str]]:
    """A message to ``recipients`` as a client submits it; (queue id, those refused at
    RCPT). Each address goes on the wire as written, inside <>."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    await client.mail("bounces@mail.example.com")
    refused = []
    for address in recipients:
        response = await client.execute_command(b"RCPT", b"TO:<" + address.encode() + b">")
        if response.code // 100 != 2:
            refused.append(address)
    queue_id = ""
    if len(refused) < len(recipients):
        _, reply = await client.data(BODY)
        queue_id = reply.rsplit(" ", 1)[1]
    await client.quit()
    return queue_id, refused


async def _mail_bounce(port: int, return_paths: Sequence[str], raw: bytes) -> str:
    """The bounce as the remote MTA mails it: null sender, to the return paths it saw."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    options = [] if raw.isascii() else ["BODY=8BITMIME"]
    try:
        _, reply = await client.sendmail("", list(return_paths), raw, mail_options=options)
    except aiosmtplib.SMTPDataError as exc:
        reply = f"{exc.code} {exc.message}"
    await client.quit()
    return reply


async def _in_batches(jobs: Sequence[Coroutine[Any, Any, T]], size: int = 8) -> list[T]:
    """Run ``jobs`` ``size`` at a time (concurrent SMTP sessions, as from several MTAs)."""
    results: list[T] = []
    for start in range(0, len(jobs), size):
        results += await asyncio.gather(*jobs[start : start + size])
    return results


async def _deliver(relay: Relay, db: asyncpg.Connection, cases: list[BounceCase]) -> set[str]:
    """Send each case's message and wait until the upstream has every delivery; the names
    of the cases whose only reported recipient the relay refused (sent to a stand-in)."""
    sent = await _in_batches([_send_message(relay.port, c.recipients) for c in cases])
    refused = {c.file.name for c, (_, no) in zip(cases, sent, strict=True) if no}
    accepted = sum(len(c.recipients) - len(no) for c, (_, no) in zip(cases, sent, strict=True))
    for case, (queue_id, _) in zip(cases, sent, strict=True):
        case.queue_id = queue_id
    again = [c for c in cases if c.file.name in refused and not c.queue_id and len(c.lines) == 1]
    for case in again:
        case.recipients, case.stand_in = [_stand_in(case.file)], True
    resent = await _in_batches([_send_message(relay.port, c.recipients) for c in again])
    for case, (queue_id, no) in zip(again, resent, strict=True):
        assert not no, f"{case.file.name}: the stand-in was refused too"
        case.queue_id = queue_id
    accepted += len(again)

    async def all_delivered() -> bool:
        states = await db.fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
        return [tuple(row) for row in states] == [("delivered", accepted)]

    await eventually(all_delivered, timeout=60)
    rows = await db.fetch(
        "SELECT d.id, d.recipient_key, m.queue_id"
        " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    )
    for case in cases:
        case.deliveries = {
            r["recipient_key"]: r["id"] for r in rows if r["queue_id"] == case.queue_id
        }
    return refused


@dataclass
class Recorded:
    """What the relay recorded after the bounce messages."""

    events: dict[int, list[asyncpg.Record]]  # bounce events by delivery, in order
    states: dict[int, str]  # by delivery
    suppressed: set[str]  # addresses, by bounce messages
    unmatched: dict[str, str]  # why a bounce to this return path was of no use

    @classmethod
    async def read(cls, db: asyncpg.Connection) -> Recorded:
        events: dict[int, list[asyncpg.Record]] = defaultdict(list)
        for row in await db.fetch(
            "SELECT delivery_id, type, category, suppress, template FROM events"
            " WHERE source = 'dsn' AND type = ANY($1::text[]) ORDER BY id",
            list(BOUNCE_EVENTS),
        ):
            events[row["delivery_id"]].append(row)
        unmatched: dict[str, str] = {}
        for row in await db.fetch("SELECT detail FROM events WHERE type = 'dsn_unmatched'"):
            detail = json.loads(row["detail"])
            unmatched |= dict.fromkeys(detail["rcpt_tos"], detail["reason"])
        return cls(
            events,
            dict(await db.fetch("SELECT id, state FROM deliveries")),
            {
                row["address"]
                for row in await db.fetch(
                    "SELECT address FROM suppressions WHERE source IN ('dsn', 'complaint')"
                )
            },
            unmatched,
        )


def _counted(lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results a delivery records: those with an event, each action once (the first;
    docs/bounce-messages.md)."""
    seen: set[str] = set()
    kept = []
    for line in lines:
        if line["event"] is not None and line["action"] not in seen:
            seen.add(line["action"])
            kept.append(line)
    return kept


def _expected_state(lines: Sequence[dict[str, Any]]) -> str:
    """A delivered delivery after these results: a hard failure bounces it, a soft one
    expires it, a delay or a complaint leaves it delivered (docs/bounce-messages.md)."""
    state = "delivered"
    for line in lines:
        if state == "delivered" and line["event"] == "hard_bounce":
            state = "bounced"
        elif state == "delivered" and line["event"] == "soft_bounce":
            state = "expired" if line["action"] == "failed" else state
    return state


def _bounce_problems(
    where: str, events: Sequence[asyncpg.Record], state: str, lines: Sequence[dict[str, Any]]
) -> list[str]:
    """How what the relay recorded for one delivery differs from the `dsn parse` lines
    about its recipient that record something."""
    problems = []
    got, want = [e["type"] for e in events], [line["event"] for line in lines]
    expected_state = _expected_state(lines)
    if got != want:
        # The state follows from the events: said on the same line.
        return [
            f"{where}: events: relay {got}, dsn parse {want}; "
            f"state: relay {state!r}, dsn parse {expected_state!r}"
        ]
    for event, line in zip(events, lines, strict=True):
        for field_name in ("category", "suppress", "template"):
            if event[field_name] != line[field_name]:
                problems.append(
                    f"{where}: {line['event']} {field_name}: relay {event[field_name]!r}, "
                    f"dsn parse {line[field_name]!r}"
                )
    if state != expected_state:
        problems.append(f"{where}: state: relay {state!r}, dsn parse {expected_state!r}")
    return problems


def _wire_problems(answers: dict[str, str], refused: set[str]) -> list[str]:
    """What did not go as the lists of files that cannot be delivered as written say."""
    problems = [
        f"{name}: the bounce was answered {answer!r}"
        for name, answer in answers.items()
        if not answer.startswith("2.0.0 OK bounce read")
        and not (name in LINE_TOO_LONG and answer.startswith("500 Line too long"))
    ]
    problems += [
        f"{name}: answered {answers[name]!r}, though a line of it is longer than SMTP allows"
        for name in sorted(LINE_TOO_LONG)
        if not answers[name].startswith("500 Line too long")
    ]
    if refused != REFUSED_RECIPIENT:
        problems.append(
            f"the relay refused the reported recipients of {sorted(refused)}, "
            f"expected exactly those of {sorted(REFUSED_RECIPIENT)}"
        )
    return problems


@pytest.mark.slow
async def test_every_real_bounce_message_is_recorded_as_dsn_parse_reads_it(
    db_dsn: str, write_config: Callable[..., Path], db: asyncpg.Connection
) -> None:
    files = sorted(BOUNCES.glob("*.eml"))
    assert len(files) == 278
    async with ScriptedUpstream() as upstream:
        path = write_config(relay_config(upstream.port, DSN_CONFIG), replace_base=True)
        config = load_config(path)
        return_paths = config.dsn.return_paths
        assert return_paths is not None
        lines_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in (
            await simulate("dsn", "parse", "--config", str(path), *map(str, files))
        ).splitlines():
            result = json.loads(line)
            lines_of[Path(result["file"]).name].append(result)
        cases = [BounceCase.of(file, lines_of[file.name]) for file in files]
        assert {c.file.name for c in cases if c.stand_in} == UNNAMED_RECIPIENT | {
            c.file.name for c in cases if not c.lines
        }
        async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=FakeClock()) as relay:
            refused = await _deliver(relay, db, cases)
            # Bounces go back to the return paths the upstream saw, as the internet's would.
            seen = {received.sender for received in upstream.received}
            to = {
                c.file.name: [return_paths.address(d) for d in c.deliveries.values()] for c in cases
            }
            assert {p for paths in to.values() for p in paths} == seen
            answers = await _in_batches(
                [_mail_bounce(relay.port, to[c.file.name], c.file.read_bytes()) for c in cases]
            )
            recorded = await Recorded.read(db)

    problems = _wire_problems(
        {c.file.name: answer for c, answer in zip(cases, answers, strict=True)}, refused
    )
    should_suppress: set[str] = set()
    for case in cases:
        for recipient, delivery, about in case.about():
            counted = [] if case.file.name in LINE_TOO_LONG else _counted(about)
            where = f"{case.file.name} ({recipient})"
            found = _bounce_problems(
                where, recorded.events.get(delivery, []), recorded.states[delivery], counted
            )
            why = recorded.unmatched.get(return_paths.address(delivery))
            problems += [f"{p} (relay: {why})" if why else p for p in found]
            if any(line["suppress"] for line in counted):
                should_suppress |= {k for k, d in case.deliveries.items() if d == delivery}
    events = [e for listed in recorded.events.values() for e in listed]
    if unrecorded := [e for e in events if e["suppress"] is None]:
        problems.append(
            f"events.suppress: relay None (not recorded) for {len(unrecorded)} of the "
            f"{len(events)} bounce events read from bounce messages; dsn parse has it for "
            "each (where recorded it is compared above; the suppressions table below)"
        )
    if recorded.suppressed != should_suppress:
        problems.append(
            "suppressed addresses: relay has "
            f"{sorted(recorded.suppressed - should_suppress)} more, "
            f"{sorted(should_suppress - recorded.suppressed)} fewer than `dsn parse` says"
        )
    if problems:
        pytest.fail(_report("`bounce-relay dsn parse`", problems))
