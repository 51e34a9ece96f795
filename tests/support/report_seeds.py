"""Bounces seeded through the store's real write path (accept, claim, apply_outcomes) at
fixed times, for the report's tests: the export itself, the admin page, the JSON API and the
browser test. Times are pinned (``T0``), never today's date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policies.providers import provider_of
from policies.smtp_reply import parse_reply
from policies.templates import template_of, wording_of
from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
# The test upstream's host names no provider: the recipient domain decides (gmail.com is
# google's), as for mail through a smarthost.
MX = "mx.test:25"
GMAIL_QUOTA = (
    "452-4.2.2 The email account that you tried to reach is over quota. Please direct\n"
    "452-4.2.2 the recipient to\n"
    "452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp {id} - gsmtp"
)
GMAIL_UNKNOWN = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
    "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser {id} - gsmtp"
)
YAHOO_FULL = "452 4.2.2 Mailbox full for {rcpt}"
# The words their rows show in the report: a reply's own, the ids and the address masked.
QUOTA_T = wording_of(GMAIL_QUOTA.format(id="z9si9.9"))
UNKNOWN_T = wording_of(GMAIL_UNKNOWN.format(id="z9si9.9"))
YAHOO_T = wording_of(YAHOO_FULL.format(rcpt="x@yahoo.com"))


class Seeder:
    """Accepts messages and records bounces through claim + apply_outcomes, at chosen times,
    each outcome with its provider as the delivery worker decides it."""

    def __init__(self, store: Store, prefix: str = "Q") -> None:
        self.store = store
        self.prefix = prefix
        self.n = 0

    async def message(
        self, rcpt: str, campaign: str | None, from_domain: str, at: datetime
    ) -> None:
        self.n += 1
        domain = rcpt.rpartition("@")[2]
        await self.store.accept_messages(
            at,
            [
                IncomingMessage(
                    queue_id=f"{self.prefix}{self.n}",
                    envelope_sender=f"bounces@{from_domain}",
                    recipients=(Recipient(rcpt, rcpt, domain),),
                    body=b"Subject: x\r\n\r\nx\r\n",
                    from_domain=from_domain,
                    message_id=None,
                    campaign=campaign,
                    client_address="127.0.0.1",
                    session_id="s",
                    smtputf8=False,
                )
            ],
        )

    async def bounce(self, at: datetime, reply: str, ip: str, kind: str = "soft") -> None:
        """The one due delivery gets ``reply`` at ``at`` (soft: due again right away)."""
        [d] = await self.store.claim_due_deliveries("seed", at, timedelta(minutes=5), 1)
        parsed = parse_reply(reply)
        await self.store.apply_outcomes(
            at,
            [
                OutcomeRecord(
                    delivery_id=d.id,
                    lease_token=d.lease_token,
                    state="queued" if kind == "soft" else "bounced",
                    event=f"{kind}_bounce",
                    next_attempt_at=at if kind == "soft" else None,
                    code=parsed.code,
                    enhanced=parsed.enhanced,
                    reply_text=reply,
                    template=template_of(reply),
                    category="mailbox_full" if kind == "soft" else "user_unknown",
                    source_ip=ip,
                    destination=MX,
                    provider=provider_of(MX, d.recipient_domain),
                )
            ],
        )

    async def finish(self, at: datetime) -> None:
        """Deliver whatever is still due, so the next message's delivery is the only one due."""
        for d in await self.store.claim_due_deliveries("seed", at, timedelta(minutes=5), 100):
            await self.store.apply_outcomes(
                at,
                [
                    OutcomeRecord(
                        delivery_id=d.id,
                        lease_token=d.lease_token,
                        state="delivered",
                        event="delivered",
                        code=250,
                        source_ip="127.0.0.9",
                        destination=MX,
                        provider=provider_of(MX, d.recipient_domain),
                    )
                ],
            )


async def seed_standard(store: Store) -> None:
    """news.example.com via .2: one message resent twice (3 soft), a second one soft once,
    one hard; shop.example.com via .3: one soft at Yahoo; campaigns A and B."""
    s = Seeder(store)
    await s.message("ann@gmail.com", "A", "news.example.com", T0)
    await s.bounce(T0, GMAIL_QUOTA.format(id="a1si1.1"), "127.0.0.2")
    await s.bounce(T0 + timedelta(minutes=20), GMAIL_QUOTA.format(id="b2si2.2"), "127.0.0.2")
    await s.bounce(T0 + timedelta(hours=2), GMAIL_QUOTA.format(id="c3si3.3"), "127.0.0.2")
    await s.finish(T0 + timedelta(hours=2))
    await s.message("bob@gmail.com", "A", "news.example.com", T0)
    await s.bounce(T0 + timedelta(hours=1), GMAIL_QUOTA.format(id="d4si4.4"), "127.0.0.2")
    await s.finish(T0 + timedelta(hours=1))
    await s.message("gone@gmail.com", "A", "news.example.com", T0)
    await s.bounce(T0, GMAIL_UNKNOWN.format(id="e5si5.5"), "127.0.0.2", kind="hard")
    await s.message("cid@yahoo.com", "B", "shop.example.com", T0)
    await s.bounce(T0 + timedelta(hours=3), YAHOO_FULL.format(rcpt="cid@yahoo.com"), "127.0.0.3")
    await s.finish(T0 + timedelta(hours=3))


HOSTILE_REPLY = "451 <script>alert(1)</script>"


async def seed_hostile_bounce(store: Store, campaign: str) -> str:
    """One soft bounce from evil.example whose reply is a script tag; returns the words its
    row shows."""
    s = Seeder(store, prefix="X")
    await s.message("v@evil.example", campaign, "evil.example", T0)
    await s.bounce(T0, HOSTILE_REPLY, "127.0.0.2")
    return wording_of(HOSTILE_REPLY)
