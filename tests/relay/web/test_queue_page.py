"""The queue page over HTTP: deliveries listed and filtered, retry and purge, attempts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from html import unescape

import aiohttp
import pytest

from policies.smtp_reply import parse_reply
from relay.ops.app import Relay
from relay.store import IncomingMessage, OutcomeRecord, QueueFilter, Recipient, Store
from tests.support.admin import base, logged_in
from tests.support.browser import PASSWORD, VIEWER_PASSWORD, add_accounts, admin_config

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)  # the relay's clock: retries are due at this time
LATER = T0 + timedelta(hours=3)  # when the deferred deliveries are due again
HOSTILE_CAMPAIGN = "<script>alert('campaign')</script>"
HOSTILE_REPLY = '550 5.1.1 <img src=x onerror="alert(1)"> no such user'


@pytest.fixture
async def relay(db_dsn, make_config) -> AsyncIterator[Relay]:
    """A relay whose clock stands at NOW, with delivery off, alice (admin) and victor
    (viewer)."""
    async with Relay(
        admin_config(make_config), dsn=db_dsn, listen=("127.0.0.1", 0), clock=lambda: NOW
    ) as r:
        await add_accounts(r.store)
        yield r


def _message(n: int, rcpt: str, campaign: str | None, from_domain: str) -> IncomingMessage:
    return IncomingMessage(
        queue_id=f"Q{n}",
        envelope_sender=f"bounces@{from_domain}",
        recipients=(Recipient(rcpt, rcpt, rcpt.rpartition("@")[2]),),
        body=b"Subject: x\r\n\r\nx\r\n",
        from_domain=from_domain,
        message_id=f"<m{n}@{from_domain}>",
        campaign=campaign,
        client_address="127.0.0.1",
        session_id="s",
        smtputf8=False,
    )


@dataclass
class Seeded:
    """Delivery ids by what happened to them."""

    deferred_ann: int
    deferred_fay: int
    delivered: int
    bounced: int
    inflight: int
    queued: int


class _Seeder:
    """Messages accepted and outcomes applied through the store's real write path: each
    message accepted at its own minute and claimed at once (it is the only one due)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.n = 0

    async def accept(self, rcpt: str, campaign: str | None, from_domain: str) -> datetime:
        self.n += 1
        at = T0 + timedelta(minutes=self.n)
        await self.store.accept_messages(at, [_message(self.n, rcpt, campaign, from_domain)])
        return at

    async def outcome(self, rcpt: str, campaign: str | None, from_domain: str, **kw: object) -> int:
        at = await self.accept(rcpt, campaign, from_domain)
        [d] = await self.store.claim_due_deliveries("seed", at, timedelta(hours=1), 1)
        if kw:
            reply = str(kw.pop("reply", "")) or None
            parsed = parse_reply(reply) if reply else None
            await self.store.apply_outcomes(
                at,
                [
                    OutcomeRecord(
                        delivery_id=d.id,
                        lease_token=d.lease_token,
                        code=parsed.code if parsed else 250,
                        enhanced=parsed.enhanced if parsed else None,
                        reply_text=reply,
                        source_ip="127.0.0.2",
                        destination="mx.test:25",
                        **kw,  # type: ignore[arg-type]
                    )
                ],
            )
        return d.id


async def seed(store: Store) -> Seeded:
    """ann@gmail.com and fay@gmail.com deferred (spring, news.example), cid@gmail.com
    delivered (autumn), dan@gmail.com bounced (a hostile campaign and reply, shop.example),
    eve@outlook.com being tried, bob@yahoo.com waiting for its first attempt."""
    s = _Seeder(store)
    soft = {"state": "queued", "event": "soft_bounce", "next_attempt_at": LATER}
    deferred_ann = await s.outcome(
        "ann@gmail.com", "spring", "news.example", reply="452 4.2.2 Mailbox FULL", **soft
    )
    deferred_fay = await s.outcome(
        "fay@gmail.com", "spring", "news.example", reply="421 4.7.0 Try again later", **soft
    )
    delivered = await s.outcome(
        "cid@gmail.com", "autumn", "news.example", state="delivered", event="delivered"
    )
    bounced = await s.outcome(
        "dan@gmail.com",
        HOSTILE_CAMPAIGN,
        "shop.example",
        reply=HOSTILE_REPLY,
        state="bounced",
        event="hard_bounce",
    )
    inflight = await s.outcome("eve@outlook.com", "spring", "shop.example")
    await s.accept("bob@yahoo.com", "spring", "news.example")
    [queued] = await store.queue_deliveries(QueueFilter(recipient_domain="yahoo.com"), 1) or []
    return Seeded(deferred_ann, deferred_fay, delivered, bounced, inflight, queued.id)


async def _get(http: aiohttp.ClientSession, relay: Relay, path: str) -> tuple[int, str]:
    async with http.get(base(relay) + path) as r:
        return r.status, await r.text()


def listed(page: str) -> list[int]:
    """The delivery ids of the listing, in order."""
    return [int(i) for i in re.findall(r'href="/queue/delivery\?id=(\d+)"', page)]


async def _admin(relay: Relay) -> tuple[aiohttp.ClientSession, str]:
    return await logged_in(relay, "alice", PASSWORD)


async def _act(
    http: aiohttp.ClientSession, relay: Relay, csrf: str, fields: list[tuple[str, str]]
) -> tuple[int, str, str]:
    """POST the action form; (status, page text, where it went)."""
    async with http.post(
        base(relay) + "/queue/action",
        data=[("csrf", csrf), *fields],
        headers={"Origin": base(relay)},
    ) as r:
        return r.status, await r.text(), str(r.url)


async def test_counts_reasons_and_every_delivery_newest_first(relay):
    """The counts of open deliveries and the deferral reasons stay at the top, the state
    names linking to the filtered listing; the listing has every delivery, newest first,
    each linking to its history and its recipient's profile."""
    s = await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        status, page = await _get(http, relay, "/queue")
    assert status == 200
    assert "Top deferral reasons" in page
    assert '<a href="/queue?state=queued">queued</a>' in page
    assert '<a href="/queue?state=inflight">inflight</a>' in page
    assert listed(page) == [
        s.queued,
        s.inflight,
        s.bounced,
        s.delivered,
        s.deferred_fay,
        s.deferred_ann,
    ]
    assert 'href="/profile?address=ann%40gmail.com"' in page
    assert "6 deliveries match." in page
    assert f'aria-label="select delivery {s.queued}"' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=queued", {"deferred_ann", "deferred_fay", "queued"}),
        ("state=inflight", {"inflight"}),
        ("recipient_domain=GMAIL.com", {"deferred_ann", "deferred_fay", "delivered", "bounced"}),
        ("from_domain=shop.example", {"bounced", "inflight"}),
        ("campaign=autumn", {"delivered"}),
        ("reply=mailbox+full", {"deferred_ann"}),
        ("state=queued&recipient_domain=gmail.com&reply=try+again", {"deferred_fay"}),
    ],
)
async def test_each_filter_narrows_the_listing(relay, query, expected):
    """State, recipient domain (any case), From domain, campaign and words of the last
    reply (any case) each narrow the listing, and together they all apply."""
    s = await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        status, page = await _get(http, relay, "/queue?" + query)
    assert status == 200
    assert set(listed(page)) == {getattr(s, name) for name in expected}
    assert f"{len(expected)} deliver" in page


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=lost", "State"),
        ("recipient_domain=exa+mple.com", "Recipient domain"),
        ("from_domain=..", "From domain"),
        ("campaign=" + "x" * 501, "Campaign"),
        ("before=-1", "before"),
        ("before=5&after=3", "before and after"),
    ],
)
async def test_a_bad_filter_is_refused_in_the_pages_words_with_the_form_kept(relay, query, field):
    """A bad filter: 400 naming the field as the form labels it; the form shows again
    with what was typed, and no listing."""
    await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        status, page = await _get(http, relay, "/queue?" + query + "&campaign=kept+me")
    assert status == 400
    alert = re.search(r'role="alert">([^<]*)<', page)
    assert alert is not None and unescape(alert[1]).startswith(field), page
    if field != "Campaign":
        assert 'name="campaign" value="kept me"' in page
    assert listed(page) == []


async def test_pages_older_and_newer_are_consistent(relay):
    """120 deliveries, 50 a page: Older goes 50, 50, 20 without a gap or a repeat, and
    Newer comes back through the same pages; the filter stays in the links."""
    await relay.store.accept_messages(
        T0, [_message(n, f"r{n}@gmail.com", "bulk", "news.example") for n in range(120)]
    )
    http, _ = await _admin(relay)
    pages: list[list[int]] = []
    async with http:
        status, page = await _get(http, relay, "/queue?campaign=bulk")
        assert status == 200 and "120 deliveries match." in page
        pages.append(listed(page))
        assert "Newer" not in page
        while older := re.search(r'href="([^"]*)">Older', page):
            assert "campaign=bulk" in unescape(older[1])
            page = (await _get(http, relay, unescape(older[1])))[1]
            pages.append(listed(page))
        assert [len(p) for p in pages] == [50, 50, 20]
        every = [i for p in pages for i in p]
        assert every == sorted(every, reverse=True) and len(set(every)) == 120
        back: list[list[int]] = [listed(page)]
        while newer := re.search(r'href="([^"]*)">← Newer', page):
            page = (await _get(http, relay, unescape(newer[1])))[1]
            back.append(listed(page))
    assert back == pages[::-1]


async def test_hostile_reply_and_campaign_are_shown_as_text(relay):
    """A campaign and a reply holding markup are escaped in the listing and the history."""
    s = await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        _, page = await _get(http, relay, "/queue?from_domain=shop.example")
        _, history = await _get(http, relay, f"/queue/delivery?id={s.bounced}")
    for text in (page, history):
        assert "<script>" not in text and "<img" not in text
        assert "&lt;script&gt;alert(&#x27;campaign&#x27;)&lt;/script&gt;" in text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text


async def test_retry_makes_only_the_selected_queued_ones_due_now_audited(relay):
    """Retry now of two deferred deliveries and a delivered one: the two are due at the
    relay's clock, the delivered one is skipped and the notice says so; the deferred one not
    ticked keeps its time. One audit row per retried delivery, naming the account and the
    reason; the filter stays in the URL."""
    s = await seed(relay.store)
    http, csrf = await _admin(relay)
    async with http:
        status, page, url = await _act(
            http,
            relay,
            csrf,
            [
                ("state", ""),
                ("campaign", "spring"),
                ("id", str(s.deferred_ann)),
                ("id", str(s.queued)),
                ("id", str(s.delivered)),
                ("action", "retry"),
                ("reason", "provider fixed"),
                ("confirm", "yes"),
            ],
        )
    assert status == 200 and "/queue?campaign=spring" in url
    assert "Retried 2 deliveries (due now). Skipped 1 delivery" in unescape(page)
    assert "1 delivered." in page
    due = {i: (await relay.store.queue_delivery(i)) for i in (s.deferred_ann, s.deferred_fay)}
    assert due[s.deferred_ann].next_attempt_at == NOW
    assert due[s.deferred_fay].next_attempt_at == LATER
    assert (await relay.store.queue_delivery(s.delivered)).state == "delivered"
    audit = [a for a in await relay.store.audit_log(50) if a.action == "queue.retry"]
    assert sorted((a.detail or {})["delivery_id"] for a in audit) == sorted(
        [s.deferred_ann, s.queued]
    )
    assert {(a.actor, a.reason) for a in audit} == {("alice", "provider fixed")}


async def test_purge_cancels_the_queued_and_skips_one_in_flight(relay):
    """Purge of a waiting delivery and one being tried: the first is cancelled (audited as
    alice), the other left alone, the notice says why; the history shows the purge."""
    s = await seed(relay.store)
    http, csrf = await _admin(relay)
    async with http:
        status, page, _ = await _act(
            http,
            relay,
            csrf,
            [
                ("id", str(s.queued)),
                ("id", str(s.inflight)),
                ("id", "999999"),
                ("action", "purge"),
                ("reason", "customer left"),
                ("confirm", "yes"),
            ],
        )
        assert status == 200
        notice = unescape(page)
        assert "Purged 1 delivery (cancelled). Skipped 2 deliveries" in notice
        assert "1 in flight (being tried right now), 1 no such delivery." in notice
        _, history = await _get(http, relay, f"/queue/delivery?id={s.queued}")
    assert (await relay.store.queue_delivery(s.queued)).state == "cancelled"
    assert (await relay.store.queue_delivery(s.inflight)).state == "inflight"
    [audit] = [a for a in await relay.store.audit_log(50) if a.action == "queue.purge"]
    assert (audit.actor, audit.subject, audit.reason) == ("alice", "bob@yahoo.com", "customer left")
    assert "queue.purge" in history and "customer left" in history


async def test_every_queued_one_matching_the_filter(relay):
    """The choice of every queued delivery matching the filter retries the queued ones the
    filter matches, not the others, whatever is ticked."""
    s = await seed(relay.store)
    http, csrf = await _admin(relay)
    async with http:
        status, page, _ = await _act(
            http,
            relay,
            csrf,
            [
                ("recipient_domain", "gmail.com"),
                ("scope", "all"),
                ("action", "retry"),
                ("reason", "gmail is back"),
                ("confirm", "yes"),
            ],
        )
    assert status == 200 and "Retried 2 deliveries (due now)." in page
    for delivery_id, due in (
        (s.deferred_ann, NOW),
        (s.deferred_fay, NOW),
        (s.queued, T0 + timedelta(minutes=6)),  # yahoo.com: not matched
    ):
        assert (await relay.store.queue_delivery(delivery_id)).next_attempt_at == due


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("reason", "need a reason"),
        ("confirm", "I am sure"),
        ("id", "Nothing selected"),
    ],
)
async def test_an_action_without_reason_confirmation_or_selection_is_refused(
    relay, missing, message
):
    """Without a reason, the confirmation or anything ticked: 400, nothing changed, and the
    page again with the selection ticked, the reason typed and the filter kept."""
    s = await seed(relay.store)
    fields = {
        "id": ("id", str(s.deferred_ann)),
        "reason": ("reason", "why not"),
        "confirm": ("confirm", "yes"),
    }
    del fields[missing]
    http, csrf = await _admin(relay)
    async with http:
        status, page, _ = await _act(
            http,
            relay,
            csrf,
            [("campaign", "spring"), ("action", "purge"), *fields.values()],
        )
    assert status == 400
    assert message in unescape(page)
    assert (await relay.store.queue_delivery(s.deferred_ann)).state == "queued"
    assert 'name="campaign" value="spring"' in page
    assert set(listed(page)) == {s.deferred_ann, s.deferred_fay, s.inflight, s.queued}
    ticked = f'value="{s.deferred_ann}" checked aria-label="select delivery {s.deferred_ann}"'
    assert (ticked in page) == (missing != "id")
    assert ('value="why not"' in page) == (missing != "reason")


async def test_a_viewer_sees_no_selection_and_may_not_act(relay):
    """A viewer's listing has no checkboxes; a retry posted anyway is refused (403) and
    changes nothing."""
    s = await seed(relay.store)
    http, csrf = await logged_in(relay, "victor", VIEWER_PASSWORD)
    async with http:
        _, page = await _get(http, relay, "/queue")
        assert listed(page) and 'type="checkbox"' not in page
        assert "need an account with the role admin" in page
        status, text, _ = await _act(
            http,
            relay,
            csrf,
            [("id", str(s.deferred_ann)), ("action", "retry"), ("reason", "x"), ("confirm", "yes")],
        )
    assert status == 403 and "Nothing was changed" in text
    assert (await relay.store.queue_delivery(s.deferred_ann)).next_attempt_at == LATER
    assert not [a for a in await relay.store.audit_log(50) if a.action.startswith("queue.")]


async def test_a_deliverys_history(relay):
    """The history: the recipient linked to its profile, the message's envelope, and each
    attempt with its code, category, source IP, destination and reply. The old
    /queue?id= form leads there."""
    s = await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        async with http.get(
            base(relay) + f"/queue?id={s.deferred_ann}", allow_redirects=False
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == f"/queue/delivery?id={s.deferred_ann}"
        status, page = await _get(http, relay, f"/queue/delivery?id={s.deferred_ann}")
    assert status == 200
    assert f"Delivery {s.deferred_ann}" in page
    assert '<a href="/profile?address=ann%40gmail.com">ann@gmail.com</a>' in page
    for text in (
        "bounces@news.example",
        "spring",
        "&lt;m1@news.example&gt;",
        "2026-11-02 10:01",  # created
        "2026-11-02 13:00",  # next attempt
        "soft_bounce",
        "452 4.2.2",
        "127.0.0.2",
        "mx.test:25",
        "Mailbox FULL",
    ):
        assert text in page, text


async def test_an_unknown_delivery_says_so(relay):
    http, _ = await _admin(relay)
    async with http:
        status, page = await _get(http, relay, "/queue/delivery?id=424242")
        assert status == 404
        assert "No delivery has the id 424242" in page
        status, page = await _get(http, relay, "/queue/delivery")
        assert status == 400 and "Which delivery?" in page
        status, page = await _get(http, relay, "/queue/delivery?id=%D9%A3")
        assert status == 400 and "delivery id" in page


@pytest.mark.parametrize(
    "query",
    ["campaign=a%00b", "reply=%ED%A0%80", "reply=%25_%5C", "from_domain=b%C3%BCcher.example"],
)
async def test_odd_text_in_a_filter_is_looked_for_not_a_failure(relay, query):
    """A NUL, bytes that are not UTF-8, LIKE's wildcards, a domain's U-label: looked for
    as given (nothing matches here), never a 500."""
    await seed(relay.store)
    http, _ = await _admin(relay)
    async with http:
        status, page = await _get(http, relay, "/queue?" + query)
    assert status == 200, page
    assert listed(page) == [] and "0 deliveries match." in page


async def test_a_tagged_recipients_domain_flag_is_on_its_history(relay):
    """[recipients] "tag" accepted ann@gmial.com and recorded why: her delivery's history
    says so; a delivery accepted untagged has no such line."""
    flagged = Recipient("ann@gmial.com", "ann@gmial.com", "gmial.com", "likely_typo:gmail.com")
    tagged = replace(_message(90, "ann@gmial.com", "spring", "news.example"), recipients=(flagged,))
    plain = _message(91, "bob@gmail.com", "spring", "news.example")
    await relay.store.accept_messages(T0, [tagged, plain])
    [one] = await relay.store.queue_deliveries(QueueFilter(recipient_domain="gmial.com"), 1) or []
    [other] = await relay.store.queue_deliveries(QueueFilter(recipient_domain="gmail.com"), 1) or []
    http, _ = await _admin(relay)
    async with http:
        _, page = await _get(http, relay, f"/queue/delivery?id={one.id}")
        _, plain_page = await _get(http, relay, f"/queue/delivery?id={other.id}")
    assert "<b>recipient domain flagged</b>" in page
    assert "likely_typo:gmail.com" in page
    assert "recipient domain flagged" not in plain_page
