"""The guardrails page: campaign sends held as canaries or paused, with the evidence that
paused them, and their release (audited)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from policies.guardrails import GuardrailRules
from relay.delivery.guardrails import release_send, standing
from relay.store.guardrails import GuardrailRow, Send
from relay.web.html import Content, Markup, concat, element, link, table
from relay.web.pages.login import same_origin_only
from relay.web.pages.shell import (
    FORM,
    SESSION,
    Guard,
    PageContext,
    Pages,
    actor,
    back_to,
    confirmed_form,
    csrf_field,
    outcome_notice,
    when,
    whole_page,
)
from relay.web.pages.suppression import MAX_REASON

# A send's parts as they come back in a form or a link, bounded like the values they name: a
# campaign as the intake keeps it (policies.headers: up to a 998-character header line; a
# shorter bound would leave a long campaign's send unreachable and unreleasable here), a
# domain, a provider's name.
_PARTS = ("campaign", "from_domain", "provider")
_MAX_PART = {"campaign": 998, "from_domain": 255, "provider": 255}
# The release form's ``send`` field: the three parts as a JSON list, each character escaped
# at worst (\uXXXX); checked before it is parsed, which also bounds its nesting.
_MAX_SEND_FIELD = 6 * sum(_MAX_PART.values()) + 16


def _href(send: Send) -> str:
    query = {"campaign": send.campaign, "from_domain": send.from_domain, "provider": send.provider}
    return "/guardrails/send?" + urlencode(query)


def _send_of(values: dict[str, str]) -> Send:
    parts = [values.get(k, "") for k in _PARTS]
    if (
        not parts[0]
        or not parts[2]
        # PostgreSQL text holds no NUL: no send has one, and asking would be a database error.
        or any(len(p) > _MAX_PART[k] or "\x00" in p for k, p in zip(_PARTS, parts, strict=True))
    ):
        raise web.HTTPBadRequest(text="want campaign, provider (and from_domain), each short\n")
    return Send(*parts)


def _send_field(text: str) -> Send:
    """The release form's ``send``: [campaign, from_domain, provider], three strings."""
    bad = web.HTTPBadRequest(text="send: want [campaign, from_domain, provider]\n")
    if len(text) > _MAX_SEND_FIELD:
        raise bad
    try:
        parts = json.loads(text)
    except (ValueError, RecursionError):
        raise bad from None
    # A string or a mapping of three would unpack too: only a list of three strings is a send.
    if not (isinstance(parts, list) and len(parts) == 3 and all(isinstance(p, str) for p in parts)):
        raise bad
    return _send_of(dict(zip(_PARTS, parts, strict=True)))


def _release_csrf(request: web.Request) -> Markup | None:
    """The release forms' token; None for a viewer, who is shown no form (a release posted
    anyway is refused by the login guard)."""
    session = request[SESSION]
    return csrf_field(session) if session.role == "admin" else None


def _viewer_note(csrf: Markup | None, rows: list[GuardrailRow]) -> Markup | None:
    """Why a viewer sees no Release button where a send is paused."""
    if csrf is not None or not any(r.state == "paused" for r in rows):
        return None
    return element("p", "Releasing needs an account with the role admin.", class_="muted")


def _release_form(csrf: Markup, send: Send) -> Markup:
    key = json.dumps([send.campaign, send.from_domain, send.provider])
    return confirmed_form("/guardrails/release", csrf, ("send", key), "Release")


class GuardrailPages(Pages):
    """/guardrails, one send's evidence, and the release."""

    def _rules(self) -> GuardrailRules:
        return self.rules().guardrails if self.rules is not None else GuardrailRules()

    async def guardrails_page(self, request: web.Request) -> web.Response:
        rows = await self.store.list_guardrails(None, 200)
        csrf = _release_csrf(request)
        body = concat(
            outcome_notice(request),
            element(
                "p",
                "Each campaign is watched per From domain and mailbox provider. A new one "
                "sends a canary first; one whose bounce, unknown-user or complaint rate "
                "reaches its pause threshold is paused: its deliveries wait untried (nothing "
                "bounces, nobody is suppressed) until it is released here.",
            ),
            _viewer_note(csrf, rows),
            table(
                [
                    "campaign",
                    "From domain",
                    "provider",
                    "state",
                    "level",
                    "canary",
                    "since",
                    "tripped",
                    "why",
                    "",
                ],
                [self._row(r, csrf) for r in rows],
            )
            if rows
            else element("p", "No campaign sent yet."),
        )
        return whole_page(request, "Guardrails", body)

    @staticmethod
    def _row(r: GuardrailRow, csrf: Markup | None) -> list[Content]:
        return [
            link(_href(r.send), r.send.campaign),
            r.send.from_domain,
            r.send.provider,
            element("strong", r.state) if r.state == "paused" else r.state,
            r.level,
            f"{r.canary_sent} of {r.canary_slice}" if r.canary_slice else "",
            when(r.since),
            when(r.tripped_at),
            # Why it is paused, or why it is under review (a review holds nothing but is
            # worth a look): the last judgement's reason.
            r.reason if r.state == "paused" or r.level == "review" else "",
            _release_form(csrf, r.send) if r.state == "paused" and csrf is not None else "",
        ]

    async def send_page(self, request: web.Request) -> web.Response:
        send = _send_of(dict(request.query))
        row = await self.store.guardrail(send)
        if row is None:
            raise web.HTTPNotFound(text=f"no guardrail for {send.label()}\n")
        start, counts, verdict = await standing(self.store, row, self._rules(), self.clock())
        csrf = _release_csrf(request)
        now_table = table(
            ["rate", "count", "attempts", "value", "review at", "pause at", "level"],
            [
                [
                    f.rate.replace("_", " "),
                    f.count,
                    f.attempts,
                    "too few to judge" if f.value is None else f"{f.value:.2%}",
                    f"{f.threshold.review:.2%}",
                    f"{f.threshold.pause:.2%}",
                    f.level.value,
                ]
                for f in verdict.findings
            ],
            numeric={1, 2},
        )
        parts = [
            outcome_notice(request),
            element(
                "p",
                f"State: {row.state}. Counted from {when(start)}: {counts.attempts} attempts, "
                f"{counts.delivered} delivered. Now: {verdict.level.value}.",
            ),
            now_table,
        ]
        if row.released_at is not None:
            parts.append(
                element("p", f"Released {when(row.released_at)} by {row.released_by or 'unknown'}.")
            )
        if row.evidence:
            parts += self._evidence(row)
        if row.state == "paused":
            parts.append(
                _release_form(csrf, row.send) if csrf is not None else _viewer_note(csrf, [row])
            )
        return whole_page(request, f"Guardrail: {send.label()}", concat(*parts))

    @staticmethod
    def _evidence(row: GuardrailRow) -> list[Markup]:
        evidence = row.evidence or {}
        findings = evidence.get("findings", [])
        samples = evidence.get("samples", [])
        return [
            element("h2", f"When it tripped ({when(row.tripped_at)})"),
            element("p", row.reason),
            table(
                ["rate", "count", "attempts", "value", "pause at"],
                [
                    [
                        str(f.get("rate", "")).replace("_", " "),
                        f.get("count", ""),
                        f.get("attempts", ""),
                        "too few to judge"
                        if f.get("value") is None
                        else f"{float(f['value']):.2%}",
                        f"{float(f.get('pause', 0)):.2%}",
                    ]
                    for f in findings
                ],
                numeric={1, 2},
            ),
            element("h2", "Sample replies"),
            table(
                ["amount", "code", "category", "reply"],
                [
                    [
                        s.get("amount", ""),
                        s.get("code", ""),
                        s.get("category", ""),
                        s.get("sample") or s.get("template", ""),
                    ]
                    for s in samples
                ],
                numeric={0},
            )
            if samples
            else element("p", "No hard bounce recorded (a complaint rate tripped it)."),
        ]

    async def release(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        reason = str(form.get("reason", "")).strip()
        send = _send_field(str(form.get("send", "")))
        if form.get("confirm") != "yes" or not reason:
            raise back_to(
                "/guardrails", problem="Releasing needs a reason and the confirmation box."
            )
        if len(reason) > MAX_REASON:
            raise back_to(
                "/guardrails",
                problem=f"Nothing released: the reason is longer than {MAX_REASON:,} characters.",
            )
        released = await release_send(self.store, send, self.clock(), actor(request), reason)
        if not released:
            raise back_to("/guardrails", problem=f"{send.label()} is not paused.")
        raise back_to(
            "/guardrails",
            done=f"{send.label()} released: its held deliveries are due now.",
        )


def add_routes(app: web.Application, ctx: PageContext, guarded: Guard) -> None:
    pages = GuardrailPages(ctx)
    app.router.add_get("/guardrails", guarded(pages.guardrails_page))
    app.router.add_get("/guardrails/send", guarded(pages.send_page))
    app.router.add_post("/guardrails/release", same_origin_only(guarded(pages.release)))
