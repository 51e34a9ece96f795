"""The guardrails page over HTTP: the watched sends (held ones first), one send's rates now
and the evidence of its trip, and its release (a reason, the confirmation, audited; never by
a viewer). The sends are seeded as a relay makes them: messages accepted, claimed, let
through or held by the real ``GuardrailGate``, their outcomes applied (so the rollups have
real counts) and judged by the real ``GuardrailWatch``, on a clock before the page's NOW."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from urllib.parse import quote, urlencode

import aiohttp
import asyncpg
import pytest

from policies.guardrails import GuardrailRules
from policies.providers import provider_of
from relay.delivery.guardrails import GuardrailGate, GuardrailWatch
from relay.ops.app import Relay
from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store
from relay.store.guardrails import Send
from relay.web.pages.suppression import MAX_REASON
from tests.support.admin import NOW, base, logged_in
from tests.support.browser import PASSWORD, VIEWER_PASSWORD, add_accounts, admin_config

FROM = "news.example.com"
SPRING = Send("spring", FROM, "google")  # 13 unknown users in its canary of 100: paused
AUTUMN = Send("autumn", FROM, "microsoft")  # 30 messages, all delivered: still a canary
SUMMER = Send("summer", FROM, "yahoo")  # 3 unknown users in 100: open, level review
GONE = "550 5.1.1 <{0}>: The email account that you tried to reach does not exist."
GONE_TEMPLATE = "550 5.1.1 <*>: The email account that you tried to reach does not exist."
HOSTILE = '550 5.1.1 <img src=x onerror="alert(1)"> Empfänger unbekannt'
MX = {
    "gmail.com": "gmail-smtp-in.l.google.com:25",
    "outlook.com": "outlook-com.olc.protection.outlook.com:25",
    "yahoo.com": "mta5.am0.yahoodns.net:25",
}
# The seeding's times, all before the page's clock (NOW): counted in the hour before it.
SENT = NOW - timedelta(minutes=50)
TRIPPED = NOW - timedelta(minutes=40)
SUMMER_SENT = NOW - timedelta(minutes=30)
SUMMER_OPENED = NOW - timedelta(minutes=20)


@pytest.fixture
async def relay(db_dsn, make_config) -> AsyncIterator[Relay]:
    """A relay whose clock stands at NOW, with delivery off, alice (admin) and victor
    (viewer)."""
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as r:
        await add_accounts(r.store)
        yield r


@pytest.fixture
async def db(db_dsn) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


class _Relaying:
    """A delivery worker's rounds, through the real gate and store: claim what is due,
    let the gate say what goes, hand the rest back untried (due after ``recheck``), apply
    each sent delivery's reply; and the watch's passes, on this clock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.now = SENT
        self.rules = GuardrailRules()
        self.gate = GuardrailGate(store, lambda: self.rules)
        self.watch = GuardrailWatch(store, self.gate, lambda: self.rules, clock=lambda: self.now)
        self.n = 0

    async def accept(self, campaign: str, addresses: list[str]) -> None:
        messages = []
        for address in addresses:
            self.n += 1
            domain = address.rpartition("@")[2]
            messages.append(
                IncomingMessage(
                    queue_id=f"Q{self.n:05d}",
                    envelope_sender=f"bounces@{FROM}",
                    recipients=(Recipient(address, address, domain),),
                    body=b"Subject: news\r\n\r\nnews\r\n",
                    from_domain=FROM,
                    message_id=None,
                    campaign=campaign,
                    client_address="127.0.0.1",
                    session_id="s",
                    smtputf8=False,
                )
            )
        await self.store.accept_messages(self.now, messages)

    async def round(self, replies: dict[str, str]) -> tuple[int, int]:
        """One round at ``now``: (sent, held). Recipients in ``replies`` are refused with
        that reply (550 5.1.1, an unknown user), the others delivered."""
        claimed = await self.store.claim_due_deliveries(
            "seed", self.now, timedelta(hours=1), 10_000
        )
        going, held = await self.gate.admit(claimed, self.now)
        due = self.now + self.rules.recheck
        await self.store.defer_leases(self.now, [(d.id, d.lease_token, due) for d in held])
        outcomes = []
        for d in going:
            destination = MX[d.recipient_domain]
            provider = provider_of(destination, d.recipient_domain)
            reply = replies.get(d.recipient)
            outcome = OutcomeRecord(
                delivery_id=d.id,
                lease_token=d.lease_token,
                state="delivered" if reply is None else "bounced",
                event="delivered" if reply is None else "hard_bounce",
                code=250 if reply is None else 550,
                enhanced=None if reply is None else "5.1.1",
                reply_text=reply,
                template=None if reply is None else _template(reply),
                category=None if reply is None else "user_unknown",
                source_ip="127.0.0.2",
                destination=destination,
                provider=provider,
            )
            outcomes.append(outcome)
        await self.store.apply_outcomes(self.now + timedelta(minutes=1), outcomes)
        return len(going), len(held)


def _template(reply: str) -> str:
    return GONE_TEMPLATE if "does not exist" in reply else reply


@dataclass(frozen=True)
class Seeded:
    spring_held: int  # spring's deliveries waiting untried
    summer_sent: int


async def seed(store: Store) -> Seeded:
    """spring (news.example.com to Google): 120 messages, the canary's 100 go, 13 of them
    to unknown users (11 with Gmail's reply, 2 with a hostile one): paused when judged,
    its 20 others wait untried. autumn (to Microsoft): 30, all delivered, a canary still
    (its slice of 100 is not spent). summer (to Yahoo), sent later: 100, 3 unknown users:
    its canary passes, it is open at level review (unknown users at 3%, review at 2%)."""
    r = _Relaying(store)
    spring = [f"s{i}@gmail.com" for i in range(120)]
    unknown = [a for i, a in enumerate(spring[:100]) if i % 8 == 0]  # 13
    replies = {a: GONE.format(a) for a in unknown[:11]} | {a: HOSTILE for a in unknown[11:]}
    await r.accept("spring", spring)
    await r.accept("autumn", [f"a{i}@outlook.com" for i in range(30)])
    sent, held = await r.round(replies)
    assert (sent, held) == (130, 20)
    r.now = TRIPPED
    await r.watch.check()
    r.now = SUMMER_SENT
    summer = [f"y{i}@yahoo.com" for i in range(100)]
    await r.accept("summer", summer)
    sent, held = await r.round({a: GONE.format(a) for a in summer[:3]})
    assert (sent, held) == (100, 20)  # spring's 20, due again, are held again: paused
    r.now = SUMMER_OPENED
    await r.watch.check()
    return Seeded(spring_held=20, summer_sent=100)


def href(send: Send) -> str:
    return "/guardrails/send?" + urlencode(
        {"campaign": send.campaign, "from_domain": send.from_domain, "provider": send.provider}
    )


def send_key(send: Send) -> str:
    """The release form's hidden ``send`` field."""
    return json.dumps([send.campaign, send.from_domain, send.provider])


async def _get(http: aiohttp.ClientSession, relay: Relay, path: str) -> tuple[int, str]:
    async with http.get(base(relay) + path) as r:
        return r.status, await r.text()


async def _release(
    http: aiohttp.ClientSession, relay: Relay, csrf: str, fields: dict[str, str]
) -> tuple[int, str, str]:
    """POST the release form; (status, page text, where it went)."""
    async with http.post(
        base(relay) + "/guardrails/release",
        data={"csrf": csrf, **fields},
        headers={"Origin": base(relay)},
    ) as r:
        return r.status, await r.text(), str(r.url)


def listed(page: str) -> list[tuple[str, str]]:
    """(campaign, state) of each row of the listing, in order."""
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    found = []
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cells:
            campaign = re.sub(r"<[^>]+>", "", cells[0])
            state = re.sub(r"<[^>]+>", "", cells[3])
            found.append((unescape(campaign), state))
    return found


async def _state(db: asyncpg.Connection, send: Send) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM guardrails WHERE campaign = $1 AND from_domain = $2 AND provider = $3",
        send.campaign,
        send.from_domain,
        send.provider,
    )
    return state


async def test_the_list_shows_held_sends_first_and_why(relay):
    """Paused and canary sends come before the open one though it changed last; the paused
    one says why and offers its release; a canary says how much of its slice went; each
    send links to its page."""
    await seed(relay.store)
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await _get(http, relay, "/guardrails")
    assert status == 200
    assert listed(page) == [("spring", "paused"), ("autumn", "canary"), ("summer", "open")]
    assert 'aria-current="page">Guardrails</a>' in page
    for send in (SPRING, AUTUMN, SUMMER):
        assert f'href="{href(send).replace("&", "&amp;")}"' in page
    assert "30 of 100" in page  # autumn's canary
    assert "100 of 100" in page  # spring's and summer's, spent
    assert "unknown user rate 13.00% (13 of 100 attempts" in page
    assert page.count('action="/guardrails/release"') == 1
    assert f'name="send" value="{send_key(SPRING).replace(chr(34), "&quot;")}"' in page
    assert "2026-11-03 09:20" in page  # spring tripped at TRIPPED
    # summer is open but under review: its reason is shown, it offers no release
    assert "hard bounce rate 3.00% (3 of 100 attempts; review at 2.00%" in page


async def test_an_empty_list_says_so(relay):
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await _get(http, relay, "/guardrails")
    assert status == 200 and "No campaign sent yet." in page


async def test_a_paused_sends_page_shows_its_rates_now_and_the_evidence(relay):
    """The rates now (from the rollups: 100 attempts, 87 delivered, 13 unknown users), the
    trip's findings against their thresholds, its sample replies, most frequent first, the
    hostile one as text, and the release form."""
    await seed(relay.store)
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await _get(http, relay, href(SPRING))
    assert status == 200
    text = unescape(page)
    assert "Guardrail: spring / news.example.com / google" in text
    assert "State: paused. Counted from 2026-11-03 09:10: 100 attempts, 87 delivered." in text
    assert "Now: pause." in text
    now_rows = _table_rows(page, 0)
    assert ["unknown user", "13", "100", "13.00%", "2.00%", "5.00%", "pause"] in now_rows
    assert ["bounce", "13", "100", "13.00%", "5.00%", "10.00%", "pause"] in now_rows
    assert ["complaint", "0", "100", "too few to judge", "0.10%", "0.30%", "unknown"] in now_rows
    assert "When it tripped (2026-11-03 09:20)" in text
    findings = _table_rows(page, 1)
    assert ["hard bounce", "13", "100", "13.00%", "5.00%"] in findings
    assert ["complaint", "0", "100", "too few to judge", "0.30%"] in findings
    samples = _table_rows(page, 2)
    assert samples[0][:3] == ["11", "550 5.1.1", "user_unknown"]
    assert "does not exist" in samples[0][3] and "@gmail.com" in samples[0][3]
    assert samples[1] == ["2", "550 5.1.1", "user_unknown", HOSTILE]
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert 'action="/guardrails/release"' in page


async def test_an_open_and_a_canary_sends_pages(relay):
    """summer: open at level review, its rates now, no evidence (it never tripped), no
    release; autumn: a canary with too few attempts to judge."""
    await seed(relay.store)
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        _, summer = await _get(http, relay, href(SUMMER))
        _, autumn = await _get(http, relay, href(AUTUMN))
    assert "State: open. Counted from 2026-11-03 09:30: 100 attempts, 97 delivered." in summer
    assert "Now: review." in summer
    assert ["unknown user", "3", "100", "3.00%", "2.00%", "5.00%", "review"] in _table_rows(
        summer, 0
    )
    assert "When it tripped" not in summer and 'action="/guardrails/release"' not in summer
    assert "State: canary. Counted from 2026-11-03 09:10: 30 attempts, 30 delivered." in autumn
    assert "Now: unknown." in autumn


async def test_release_needs_a_reason_and_the_confirmation(relay, db):
    """Without a reason (or only blanks) or the ticked box: back to the list with the
    problem said, nothing released, nothing audited."""
    await seed(relay.store)
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    async with http:
        for fields in (
            {"send": send_key(SPRING), "reason": "list cleaned"},
            {"send": send_key(SPRING), "confirm": "yes"},
            {"send": send_key(SPRING), "reason": "   ", "confirm": "yes"},
        ):
            status, page, url = await _release(http, relay, csrf, fields)
            assert status == 200 and url.startswith(base(relay) + "/guardrails?"), fields
            assert "Releasing needs a reason and the confirmation box." in page
    assert await _state(db, SPRING) == "paused"
    assert await db.fetchval("SELECT count(*) FROM admin_audit WHERE action LIKE 'guardrail%'") == 0


async def test_an_overlong_reason_releases_nothing(relay, db):
    await seed(relay.store)
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    fields = {"send": send_key(SPRING), "reason": "x" * (MAX_REASON + 1), "confirm": "yes"}
    async with http:
        status, page, _ = await _release(http, relay, csrf, fields)
    assert status == 200 and "the reason is longer than 1,000 characters" in page
    assert await _state(db, SPRING) == "paused"


async def test_release_opens_the_send_audited_with_the_accounts_name(relay, db):
    """alice releases spring with a reason: the notice says so, the list shows it open, its
    page says who released it and counts afresh from the release; admin_audit has her name,
    the reason and the evidence; its held deliveries are due (no later than now). A second
    release finds nothing paused."""
    s = await seed(relay.store)
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    fields = {"send": send_key(SPRING), "reason": "list cleaned", "confirm": "yes"}
    async with http:
        status, page, url = await _release(http, relay, csrf, fields)
        assert status == 200 and "/guardrails?" in url
        notice = re.search(r'class="ok" role="status">([^<]*)<', page)
        assert notice is not None
        assert unescape(notice[1]) == (
            "spring / news.example.com / google released: its held deliveries are due now."
        )
        assert ("spring", "open") in listed(page)
        _, shown = await _get(http, relay, href(SPRING))
        status, again, _ = await _release(http, relay, csrf, fields)
    assert "Released 2026-11-03 10:00 by alice." in shown
    assert "Counted from 2026-11-03 10:00: 0 attempts" in shown
    assert "When it tripped (2026-11-03 09:20)" in shown  # the evidence stays
    assert 'action="/guardrails/release"' not in shown
    assert status == 200 and "spring / news.example.com / google is not paused." in unescape(again)
    row = await db.fetchrow("SELECT * FROM guardrails WHERE campaign = 'spring'")
    assert (row["state"], row["released_by"], row["released_at"]) == ("open", "alice", NOW)
    [audit] = await db.fetch("SELECT * FROM admin_audit WHERE action = 'guardrail.release'")
    assert (audit["actor"], audit["reason"], audit["occurred_at"]) == ("alice", "list cleaned", NOW)
    assert audit["subject"] == "guardrail spring / news.example.com / google"
    evidence = json.loads(audit["detail"])["evidence"]
    assert evidence["counts"]["unknown_users"] == 13
    held = await db.fetch(
        "SELECT d.next_attempt_at FROM deliveries d JOIN messages m ON m.id = d.message_id"
        " WHERE m.campaign = 'spring' AND d.state = 'queued' AND d.attempts = 0"
    )
    assert len(held) == s.spring_held and all(r["next_attempt_at"] <= NOW for r in held)


async def test_a_viewer_sees_the_evidence_but_may_not_release(relay, db):
    """victor (viewer) reads the list and the send's page, without a release form; a
    release posted anyway is refused (403) and changes nothing."""
    await seed(relay.store)
    http, csrf = await logged_in(relay, "victor", VIEWER_PASSWORD)
    fields = {"send": send_key(SPRING), "reason": "x", "confirm": "yes"}
    async with http:
        status, page = await _get(http, relay, "/guardrails")
        assert status == 200 and listed(page)[0] == ("spring", "paused")
        assert 'action="/guardrails/release"' not in page
        assert "Releasing needs an account with the role admin." in page
        status, shown = await _get(http, relay, href(SPRING))
        assert status == 200 and "Sample replies" in shown
        assert 'action="/guardrails/release"' not in shown
        status, refused, _ = await _release(http, relay, csrf, fields)
    assert status == 403 and "Nothing was changed" in refused
    assert await _state(db, SPRING) == "paused"
    assert await db.fetchval("SELECT count(*) FROM admin_audit WHERE action LIKE 'guardrail%'") == 0


@pytest.mark.parametrize(
    "query",
    [
        "",
        "campaign=spring&from_domain=news.example.com",  # no provider
        "from_domain=news.example.com&provider=google",  # no campaign
        "campaign=spring&provider=" + "g" * 256,
        "campaign=spring&provider=google&from_domain=" + "d" * 256,
        "campaign=" + "c" * 999 + "&provider=google",
        "campaign=a%00b&provider=google",  # no send has a NUL: PostgreSQL text cannot
    ],
)
async def test_a_bad_send_in_the_link_is_400(relay, query):
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await _get(http, relay, "/guardrails/send?" + query)
    assert status == 400, page


@pytest.mark.parametrize(
    "query",
    [
        "campaign=winter&provider=google",
        "campaign=%ED%A0%80&provider=google",
        "campaign=spring&provider=google&from_domain=b%C3%BCcher.example",
    ],
)
async def test_an_unknown_send_is_404_whatever_its_text(relay, query):
    """No such send, bytes that are not UTF-8, a U-label: 404, never a 500."""
    await seed(relay.store)
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await _get(http, relay, "/guardrails/send?" + query)
    assert status == 404, page


async def test_a_campaign_as_long_as_a_header_keeps_is_shown_and_released(relay, db):
    """The intake keeps a campaign of up to 998 characters (a header line): such a send is
    listed, its page opens from the list's link and the release form releases it."""
    long = Send("c" * 998, FROM, "google")
    await relay.store.start_canary(long, TRIPPED, 100)
    assert await relay.store.judge_guardrail(
        long, TRIPPED, judged_in="canary", level="pause", reason="x", new_state="paused"
    )
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    async with http:
        _, page = await _get(http, relay, "/guardrails")
        link = re.search(r'href="(/guardrails/send\?[^"]+)"', page)
        assert link is not None
        status, _ = await _get(http, relay, unescape(link[1]))
        assert status == 200
        fields = {"send": send_key(long), "reason": "fine", "confirm": "yes"}
        status, released, _ = await _release(http, relay, csrf, fields)
    assert status == 200 and "released: its held deliveries are due now" in released
    assert await _state(db, long) == "open"


@pytest.mark.parametrize(
    "send",
    [
        "",
        "not json",
        '{"campaign": "spring"}',
        '["spring", "news.example.com"]',
        '["spring", "news.example.com", "google", "extra"]',
        '"abc"',  # a string of three characters is no send
        '{"a": 1, "b": 2, "c": 3}',  # nor are a mapping's three keys
        '[["spring"], "news.example.com", "google"]',
        '[null, "news.example.com", "google"]',
        '["spring", "news.example.com", ""]',
        '["spring", "news.example.com", "' + "g" * 256 + '"]',
        "[" * 4000 + "]" * 4000,  # short enough to parse, deeper than json's recursion
        "[" * 100_000 + "]" * 100_000,
        "[" * 200_000,
    ],
)
async def test_a_bad_send_in_the_release_form_is_400(relay, db, send):
    """The hidden field must be [campaign, from_domain, provider], three short strings:
    anything else is 400, never a 500, nothing released."""
    await seed(relay.store)
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page, _ = await _release(
            http, relay, csrf, {"send": send, "reason": "r", "confirm": "yes"}
        )
    assert status == 400, page[:300]
    assert await _state(db, SPRING) == "paused"


async def test_the_send_page_link_round_trips_odd_campaign_text(relay):
    """A campaign with spaces, &, # and markup: its link from the list opens its page, where
    it shows as text."""
    odd = Send("a&b #1 <b>x</b>?", FROM, "google")
    await relay.store.start_canary(odd, SENT, 100)
    http, _ = await logged_in(relay, "alice", PASSWORD)
    async with http:
        _, page = await _get(http, relay, "/guardrails")
        link = re.search(r'href="(/guardrails/send\?[^"]+)"', page)
        assert link is not None
        assert quote("a&b #1", safe="") in unescape(link[1]).replace("+", "%20")
        status, shown = await _get(http, relay, unescape(link[1]))
    assert status == 200
    assert "<b>x</b>" not in shown and "a&amp;b #1 &lt;b&gt;x&lt;/b&gt;?" in shown


def _table_rows(page: str, index: int) -> list[list[str]]:
    """The body rows of the page's ``index``-th table, as cell texts."""
    tables = re.findall(r"<tbody>(.*?)</tbody>", page, re.S)
    rows = re.findall(r"<tr>(.*?)</tr>", tables[index], re.S)
    return [
        [unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]
