"""The suppression list page over HTTP: the filter, sorting and pages with their total; removal
of one or many (CSRF, audit, refusals); the CSV export and import."""

from __future__ import annotations

import codecs
import csv
import io
import re
from datetime import datetime, timedelta
from html import escape

import aiohttp
import aiosmtplib
import asyncpg
import pytest

from relay.cli.suppression import suppression_export
from relay.ops.app import Relay
from relay.store import IncomingMessage, OutcomeRecord, Recipient, Store
from relay.store.suppression import SOURCES
from relay.web.pages.suppression import IMPORT_MAX_BYTES
from tests.support.admin import NOW, base, logged_in
from tests.support.browser import PASSWORD, add_accounts

# When the seeded bounces happened: fixed, never today's date.
# In the past: entries added by hand or imported in a test (now) are always later.
T0 = NOW - timedelta(days=5)  # the relay's clock is NOW (tests/relay/web/conftest.py)


async def suppress_by_bounces(
    store: Store, at: datetime, addresses: list[str], category: str = "user_unknown"
) -> None:
    """A message to each address, and its hard bounce at ``at`` (category ``category``),
    through the store's write path: each address is suppressed at ``at`` by that bounce."""
    stamp = f"{at:%Y%m%d%H%M}{category}"
    await store.accept_messages(
        at,
        [
            IncomingMessage(
                queue_id=f"{stamp}-{n}",
                envelope_sender="bounces@news.example.com",
                recipients=(Recipient(a, a, a.rpartition("@")[2]),),
                body=b"Subject: x\r\n\r\nx\r\n",
                from_domain="news.example.com",
                message_id=None,
                campaign="spring",
                client_address="127.0.0.1",
                session_id="s",
                smtputf8=False,
            )
            for n, a in enumerate(addresses)
        ],
    )
    claimed = await store.claim_due_deliveries("test", at, timedelta(minutes=5), len(addresses))
    assert len(claimed) == len(addresses)
    await store.apply_outcomes(
        at,
        [
            OutcomeRecord(
                delivery_id=d.id,
                lease_token=d.lease_token,
                state="bounced",
                event="hard_bounce",
                suppress=True,
                suppress_reason=f"{category}: 550",
                code=550,
                enhanced="5.1.1",
                reply_text=f"550 5.1.1 <{d.recipient}>: {category} here",
                category=category,
                source_ip="127.0.0.2",
                destination="mx.test:25",
            )
            for d in claimed
        ],
    )


def listed(page: str) -> list[str]:
    """The addresses of the list's rows, in order (each row's select box)."""
    return re.findall(r'name="address" value="([^"]+)"', page)


async def get(http: aiohttp.ClientSession, relay: Relay, path: str) -> tuple[int, str]:
    async with http.get(base(relay) + path) as r:
        return r.status, await r.text()


async def post(
    http: aiohttp.ClientSession, relay: Relay, path: str, data: object
) -> tuple[int, str]:
    async with http.post(base(relay) + path, data=data, headers={"Origin": base(relay)}) as r:
        return r.status, await r.text()


async def audit_rows(db_dsn: str) -> list[tuple[str, str, str, str]]:
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            "SELECT actor, action, subject, reason FROM admin_audit ORDER BY id"
        )
    finally:
        await conn.close()
    return [(r["actor"], r["action"], r["subject"], r["reason"]) for r in rows]


# -- the list ------------------------------------------------------------------------------------


async def test_the_total_and_previous_and_next_only_where_there_are_rows(relay):
    """120 entries: "120 addresses" on every page; page 1 has next but no previous, page 2
    both, page 3 (20 rows) previous only; a page past the end says so and offers only the
    way back to the last page."""
    addresses = [f"user{n:03}@example.org" for n in range(120)]
    await relay.store.import_suppressions([(a, "old list") for a in addresses], "test", "seed")
    http, _ = await logged_in(relay)
    async with http:
        pages = {
            n: await get(http, relay, f"/suppression?sort=address&page={n}") for n in (1, 2, 3, 9)
        }
    for status, page in pages.values():
        assert status == 200
        assert "<strong>120 addresses</strong>" in page
    first, middle, last, beyond = (pages[n][1] for n in (1, 2, 3, 9))
    assert listed(first) == addresses[:50] and listed(last) == addresses[100:]
    assert (
        'rel="prev"' not in first
        and 'href="/suppression?sort=address&amp;page=2" rel="next"' in first
    )
    assert 'href="/suppression?sort=address" rel="prev"' in middle
    assert 'href="/suppression?sort=address&amp;page=3" rel="next"' in middle
    assert 'href="/suppression?sort=address&amp;page=2" rel="prev"' in last
    assert 'rel="next"' not in last and "page 3 of 3" in last
    assert listed(beyond) == [] and "No entries on this page." in beyond
    assert 'href="/suppression?sort=address&amp;page=3" rel="prev"' in beyond
    assert 'rel="next"' not in beyond


async def test_one_page_has_neither_previous_nor_next_and_an_empty_list_says_so(relay):
    """Fewer entries than a page: no previous, no next. None at all: "0 addresses" and a
    line saying nothing matches, no table, no pager."""
    http, _ = await logged_in(relay)
    async with http:
        _, empty = await get(http, relay, "/suppression")
        await relay.store.add_suppression("one@example.org", "asked", "manual", actor="test")
        _, single = await get(http, relay, "/suppression")
    assert "<strong>0 addresses</strong>" in empty and "No address on the list matches." in empty
    assert "page 1" not in empty and "<table" not in empty.split("Import a CSV file")[0]
    assert "<strong>1 address</strong>" in single and listed(single) == ["one@example.org"]
    assert 'rel="prev"' not in single and 'rel="next"' not in single


async def test_sorting_by_address_and_by_date_both_ways_and_the_header_links(relay):
    """The default is newest first; sort=address A to Z, order=desc Z to A; since ascending is
    oldest first, the address breaking ties. The sorted column's header link turns the order
    round; the other column's sorts by it in its own default order."""
    await suppress_by_bounces(relay.store, T0, ["b@example.org", "d@example.org"])
    await suppress_by_bounces(relay.store, T0 + timedelta(days=1), ["c@example.org"])
    await suppress_by_bounces(relay.store, T0 + timedelta(days=2), ["a@example.org"])
    http, _ = await logged_in(relay)
    async with http:
        newest = (await get(http, relay, "/suppression"))[1]
        oldest = (await get(http, relay, "/suppression?sort=since&order=asc"))[1]
        by_address = (await get(http, relay, "/suppression?sort=address"))[1]
        backwards = (await get(http, relay, "/suppression?sort=address&order=desc"))[1]
    assert listed(newest) == ["a@example.org", "c@example.org", "b@example.org", "d@example.org"]
    assert listed(oldest) == ["b@example.org", "d@example.org", "c@example.org", "a@example.org"]
    assert listed(by_address) == [
        "a@example.org",
        "b@example.org",
        "c@example.org",
        "d@example.org",
    ]
    assert listed(backwards) == ["d@example.org", "c@example.org", "b@example.org", "a@example.org"]
    assert 'href="/suppression?order=asc">since ↓</a>' in newest
    assert 'href="/suppression?sort=address">address</a>' in newest
    assert 'href="/suppression?sort=address&amp;order=desc">address ↑</a>' in by_address
    assert "By date added, newest first" in newest and "By address, Z to A" in backwards


async def test_each_filter_narrows_the_list_and_the_total(relay):
    """Address contains, source, category of the causing bounce, and added from / to (whole
    UTC days, both inclusive) each narrow the rows and the total; together they combine."""
    await suppress_by_bounces(relay.store, T0, ["gone@example.org", "left@example.net"])
    await suppress_by_bounces(
        relay.store, T0 + timedelta(days=3), ["shut@example.org"], category="mailbox_disabled"
    )
    await relay.store.add_suppression("asked@example.org", "by phone", "manual", actor="test")
    await relay.store.import_suppressions([("old@example.com", "old list")], "test", "seed")
    day0, day3 = f"{T0:%Y-%m-%d}", f"{T0 + timedelta(days=3):%Y-%m-%d}"
    cases = {
        "search=example.org&sort=address": [
            "asked@example.org",
            "gone@example.org",
            "shut@example.org",
        ],
        "search=LEFT": ["left@example.net"],
        "source=manual": ["asked@example.org"],
        "source=import": ["old@example.com"],
        "source=hard_bounce&sort=address": [
            "gone@example.org",
            "left@example.net",
            "shut@example.org",
        ],
        "category=mailbox_disabled": ["shut@example.org"],
        "category=user_unknown&sort=address": ["gone@example.org", "left@example.net"],
        f"from={day0}&to={day0}&sort=address": ["gone@example.org", "left@example.net"],
        f"from={day3}&to={day3}": ["shut@example.org"],
        f"from={day0}&to={day3}&search=.org&sort=address": ["gone@example.org", "shut@example.org"],
        "category=greylisted": [],
    }
    http, _ = await logged_in(relay)
    async with http:
        for query, expected in cases.items():
            status, page = await get(http, relay, f"/suppression?{query}")
            assert status == 200, query
            assert listed(page) == expected, query
            noun = "address" if len(expected) == 1 else "addresses"
            assert f"<strong>{len(expected)} {noun}</strong>" in page, query
        _, page = await get(http, relay, f"/suppression?source=manual&from={day0}")
    # The form shows the filter asked for, and offers every source there is.
    assert '<option value="manual" selected>manual</option>' in page
    assert f'name="from" value="{day0}"' in page
    assert re.findall(r'<option value="([a-z_]+)"(?: selected)?>\1</option>', page)[
        : len(SOURCES)
    ] == list(SOURCES)


async def test_the_sources_offered_are_those_the_database_allows(db_dsn):
    """SOURCES (the Source select) is the CHECK constraint of suppressions.source."""
    conn = await asyncpg.connect(db_dsn)
    try:
        check = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'suppressions'::regclass AND contype = 'c'"
        )
    finally:
        await conn.close()
    assert sorted(re.findall(r"'([a-z_]+)'", check)) == sorted(SOURCES)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2021-13-01", "Added from: &#x27;2021-13-01&#x27; is not a day (YYYY-MM-DD)."),
        ("to=yesterday", "Added to: &#x27;yesterday&#x27; is not a day (YYYY-MM-DD)."),
        ("from=2021-05-07&to=2021-05-06", "Added from is after Added to"),
        ("to=9999-12-31", "Added to: at most 9999-12-30."),
        ("source=bounce", "Source: choose one of hard_bounce, dsn, complaint, manual, import"),
        ("category=%3Cscript%3E", "Category: choose one of the list"),
        ("sort=reason", "Sort by: address or date added."),
        ("order=up", "Order: ascending or descending."),
        ("page=0", "Page &#x27;0&#x27;: use a whole number from 1 to 1000000"),
        ("search=" + "a" * 321, "Address contains: at most 320 characters."),
        ("search=a%00b", "Address contains: no control characters"),
    ],
)
async def test_a_filter_that_is_not_one_is_refused_with_the_form_as_typed(relay, query, message):
    """400 saying which field is wrong in the form's words, with the form showing what was
    typed; the CSV link of such a filter answers the same."""
    http, _ = await logged_in(relay)
    async with http:
        typed = "" if "search=" in query else "&search=typed"
        status, page = await get(http, relay, f"/suppression?{query}{typed}")
        csv_status, csv_page = await get(http, relay, f"/suppression.csv?{query}")
    assert status == 400 and message in page and 'class="err"' in page
    assert 'class="filters"' in page
    if typed:
        assert 'name="search" value="typed"' in page
    assert csv_status == 400 and message in csv_page


# -- removal -------------------------------------------------------------------------------------


async def test_remove_needs_csrf_and_works_with_it(relay):
    """POST without the CSRF token is 403; with it the address is removed, audited, and the
    relay accepts it again over SMTP."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay)
    async with http:
        form = {"address": "gone@example.org", "reason": "customer called", "confirm": "yes"}
        own = {"Origin": base(relay)}
        async with http.post(base(relay) + "/suppression/remove", data=form, headers=own) as r:
            assert r.status == 403
        async with http.post(
            base(relay) + "/suppression/remove", data={**form, "csrf": csrf}, headers=own
        ) as r:
            assert r.status == 200
            page = await r.text()
    assert '<p class="ok" role="status">Removed gone@example.org.</p>' in page
    assert "customer called" in page  # the audit log on the same page
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
    await client.connect()
    await client.mail("s@example.com")
    assert (await client.rcpt("gone@example.org")).code == 250
    await client.quit()


async def test_removing_several_audits_each_naming_the_account_and_returns_to_the_list(
    relay, db_dsn
):
    """alice selects three addresses (one typed in capitals) on page 2 of a filtered list:
    the three entries go in one removal, an audit row each naming alice with her reason;
    the success notice (styled as success) counts them, and the page is the one she was on."""
    await add_accounts(relay.store)
    await suppress_by_bounces(
        relay.store, T0, ["a@example.org", "b@example.org", "c@example.org", "kept@example.org"]
    )
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    form = [("csrf", csrf), ("reason", "restored mailboxes"), ("confirm", "yes")]
    form += [("address", a) for a in ("a@example.org", "B@example.org", "c@example.org")]
    form += [("back", "search=example&sort=address&page=1&evil=https://x.example")]
    async with (
        http,
        http.post(
            base(relay) + "/suppression/remove",
            data=form,
            headers={"Origin": base(relay)},
            allow_redirects=False,
        ) as r,
    ):
        assert r.status == 303
        where = r.headers["Location"]
        async with http.get(base(relay) + where) as back:
            page = await back.text()
    assert where.startswith("/suppression?search=example&sort=address&page=1&done=")
    assert '<p class="ok" role="status">Removed 3 addresses.</p>' in page
    assert listed(page) == ["kept@example.org"]
    removals = [a for a in await audit_rows(db_dsn) if a[1] == "suppression.remove"]
    assert removals == [
        ("alice", "suppression.remove", f"{x}@example.org", "restored mailboxes") for x in "abc"
    ]
    checks = [(f"{x}@example.org", "") for x in ("a", "b", "c", "kept")]
    assert await relay.store.suppression_reasons(checks) == [None, None, None, "user_unknown: 550"]


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"reason": "why", "confirm": "yes"}, "Nothing removed: select at least one address."),
        ({"address": "gone@example.org", "confirm": "yes"}, "Nothing removed: give a reason"),
        ({"address": "gone@example.org", "reason": "  ", "confirm": "yes"}, "give a reason"),
        ({"address": "gone@example.org", "reason": "why"}, "tick the box that says you are sure"),
        (
            {"address": ["gone@example.org", "not an address"], "reason": "why", "confirm": "yes"},
            "Nothing removed: malformed address",
        ),
        (
            {"address": "kept@example.org", "reason": "why", "confirm": "yes"},
            "kept@example.org was not on the list.",
        ),
    ],
)
async def test_a_removal_without_selection_reason_or_confirmation_removes_nothing(
    relay, db_dsn, form, problem
):
    """Nothing selected, no reason, the box not ticked, an address that is not one among the
    selected, or nothing of it on the list: an error notice says what, and nothing is removed
    or audited."""
    await relay.store.add_suppression("gone@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay)
    fields = [("csrf", csrf)] + [
        (k, v)
        for k, values in form.items()
        for v in ([values] if isinstance(values, str) else values)
    ]
    async with http:
        status, page = await post(http, relay, "/suppression/remove", fields)
    assert status == 200
    assert re.search(r'<p class="err" role="alert">[^<]*' + re.escape(escape(problem)), page), page
    assert listed(page) == ["gone@example.org"]
    assert [a for a in await audit_rows(db_dsn) if a[1] == "suppression.remove"] == []


async def test_some_selected_were_removed_meanwhile(relay):
    """Of two selected, one was removed by someone else meanwhile: the other is removed, and
    the notice names the one that was no longer listed."""
    await suppress_by_bounces(relay.store, T0, ["a@example.org"])
    http, csrf = await logged_in(relay)
    fields = [("csrf", csrf), ("reason", "r"), ("confirm", "yes")]
    fields += [("address", "a@example.org"), ("address", "gone@example.org")]
    async with http:
        _, page = await post(http, relay, "/suppression/remove", fields)
    assert "Removed 1 address. Not on the list (any more): gone@example.org." in page


# -- CSV -----------------------------------------------------------------------------------------


async def test_the_csv_is_the_clis_export_of_the_filter_with_formulas_neutralised(relay):
    """/suppression.csv without a filter is byte for byte `suppression export` (the same
    columns, CRLF, formula cells prefixed with a quote: a hostile reason stays text); with
    the page's filter, only its rows."""
    hostile = '=HYPERLINK("http://evil.example","click")'
    await relay.store.add_suppression("=cmd@example.org", hostile, "manual", actor="test")
    await relay.store.add_suppression("plain@example.org", "-2+3", "manual", actor="test")
    await suppress_by_bounces(relay.store, T0, ["gone@example.net"])
    cli = io.StringIO(newline="")
    await suppression_export(relay.store, cli)
    http, _ = await logged_in(relay)
    async with http:
        async with http.get(base(relay) + "/suppression.csv") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert 'filename="suppressions.csv"' in r.headers["Content-Disposition"]
            whole = await r.read()
        async with http.get(base(relay) + "/suppression.csv?search=example.org&page=7") as r:
            filtered = list(csv.reader(io.StringIO((await r.read()).decode())))
    assert whole == cli.getvalue().encode("utf-8")
    rows = list(csv.reader(io.StringIO(whole.decode())))
    assert rows[0] == ["address", "reason", "source", "created_at"]
    assert ["'=cmd@example.org", "'" + hostile, "manual"] == rows[1][:3]
    assert rows[3][:3] == ["plain@example.org", "'-2+3", "manual"]
    assert rows[2][0] == "gone@example.net" and rows[2][3] == f"{T0:%Y-%m-%d %H:%M:%S}"
    assert [r[0] for r in filtered] == ["address", "'=cmd@example.org", "plain@example.org"]


async def test_the_page_links_to_the_csv_of_its_filter(relay):
    """The download link carries the filter, not the page or the sort."""
    http, _ = await logged_in(relay)
    async with http:
        _, page = await get(http, relay, "/suppression?source=manual&sort=address&page=2")
    assert 'href="/suppression.csv?source=manual">Download these as CSV</a>' in page


# -- import --------------------------------------------------------------------------------------


def upload(
    csrf: str, content: bytes, reason: str = "migrated from the old ESP"
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf", csrf)
    form.add_field("reason", reason)
    form.add_field("file", io.BytesIO(content), filename="old-list.csv", content_type="text/csv")
    return form


async def test_an_import_adds_the_good_lines_and_lists_the_bad_ones_by_number(relay, db_dsn):
    """A file as `suppression import` reads it (header, comment, reason column, duplicates):
    the good lines are imported (lines without a reason get the form's), the bad ones are
    listed with their line numbers, the counts are the CLI's, and one audit row names the
    account, the file and the reason."""
    await add_accounts(relay.store)
    await relay.store.add_suppression("known@example.org", "earlier", "manual", actor="test")
    content = (
        b"address,reason\n"
        b"ann@example.org,asked us\n"
        b"# a comment\n"
        b"not-an-address\n"
        b"Bob@Example.org\n"
        b"bob@example.org\n"
        b"known@example.org\n"
        b"a,b,c\n"
        b"=x@example.org,=1+1\n"
    )
    http, csrf = await logged_in(relay, "alice", PASSWORD)
    async with http:
        status, page = await post(http, relay, "/suppression/import", upload(csrf, content))
    assert status == 200
    assert (
        '<p class="ok" role="status">old-list.csv: 3 added, 1 already listed, '
        "1 duplicate lines, 2 bad lines.</p>"
    ) in page
    assert "2 lines were not imported" in page
    assert re.findall(r'<td class="n">(\d+)</td>', page) == ["4", "8"]
    assert "no @domain" in page and "expected address[,reason], got 3 fields" in page
    reasons = await relay.store.suppression_reasons(
        [
            (a, "")
            for a in ("ann@example.org", "bob@example.org", "=x@example.org", "known@example.org")
        ]
    )
    assert reasons == ["asked us", "migrated from the old ESP", "=1+1", "earlier"]
    imports = [a for a in await audit_rows(db_dsn) if a[1] == "suppression.import"]
    assert imports == [("alice", "suppression.import", "old-list.csv", "migrated from the old ESP")]


async def test_an_import_skips_a_byte_order_mark_as_the_cli_does(relay):
    """A file a spreadsheet saved as "CSV UTF-8" starts with a byte order mark: its header is
    still a header, not a bad line 1, and the addresses after it are imported (the CLI's
    ``suppression import`` reads it the same way)."""
    content = codecs.BOM_UTF8 + b"address,reason\r\nann@example.org,asked us\r\n"
    bare = codecs.BOM_UTF8 + b"bob@example.org\r\n"
    http, csrf = await logged_in(relay)
    async with http:
        status, page = await post(http, relay, "/suppression/import", upload(csrf, content))
        bare_status, bare_page = await post(http, relay, "/suppression/import", upload(csrf, bare))
    assert status == bare_status == 200
    assert "old-list.csv: 1 added, 0 already listed, 0 duplicate lines, 0 bad lines." in page
    assert "old-list.csv: 1 added, 0 already listed, 0 duplicate lines, 0 bad lines." in bare_page
    checks = [("ann@example.org", ""), ("bob@example.org", "")]
    assert await relay.store.suppression_reasons(checks) == [
        "asked us",
        "migrated from the old ESP",
    ]


async def test_more_than_twenty_bad_lines_show_the_first_twenty(relay):
    content = "\n".join(f"bad{n}" for n in range(30)).encode() + b"\nok@example.org\n"
    http, csrf = await logged_in(relay)
    async with http:
        _, page = await post(http, relay, "/suppression/import", upload(csrf, content))
    assert re.findall(r'<td class="n">(\d+)</td>', page) == [str(n) for n in range(1, 21)]
    assert "The first 20; 10 more" in page and "30 lines were not imported" in page
    assert "1 added" in page


@pytest.mark.parametrize(
    ("content", "reason", "problem"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage",
            "r",
            "the file is not UTF-8 text (invalid start byte at byte 0)",
        ),
        (
            codecs.BOM_UTF8 + b"a@example.org\n\xff",
            "r",
            "the file is not UTF-8 text (invalid start byte at byte 17)",
        ),
        (b"a@example.org\n", "", "give a reason"),
        (b"\n# only a comment\n", "r", "the file holds no address."),
    ],
)
async def test_an_import_that_cannot_be_read_imports_nothing_and_says_why(
    relay, db_dsn, content, reason, problem
):
    """A binary file, no reason, a file with no address: an error notice on the list page,
    nothing imported, nothing audited."""
    http, csrf = await logged_in(relay)
    async with http:
        status, page = await post(http, relay, "/suppression/import", upload(csrf, content, reason))
    assert status == 200
    assert '<p class="err" role="alert">Nothing imported: ' in page and escape(problem) in page
    assert "<strong>0 addresses</strong>" in page
    assert [a for a in await audit_rows(db_dsn) if a[1] == "suppression.import"] == []


@pytest.mark.parametrize("excess", [1, 3 * 1024 * 1024], ids=["just-over", "far-over"])
async def test_an_import_larger_than_the_limit_is_refused_with_a_page_saying_so(
    relay, db_dsn, excess
):
    """A file over the limit, by a byte (read, then refused) or by megabytes (aiohttp's body
    limit, raised from its 1 MiB for this route only, stops reading it): 413 with a page that
    says how large a file may be; nothing imported or audited. A file at the limit is read."""
    line = b"x" * 99 + b"\n"
    at_limit = b"ok@example.org\n" + line * ((IMPORT_MAX_BYTES - 15) // len(line))
    at_limit += b"y" * (IMPORT_MAX_BYTES - len(at_limit))
    assert len(at_limit) == IMPORT_MAX_BYTES
    http, csrf = await logged_in(relay)
    async with http:
        status, page = await post(
            http, relay, "/suppression/import", upload(csrf, at_limit + b"z" * excess)
        )
        assert status == 413
        assert "Nothing imported: the file is larger than 10 MB." in page
        assert [a for a in await audit_rows(db_dsn) if a[1] == "suppression.import"] == []
        assert await relay.store.suppression_reasons([("ok@example.org", "")]) == [None]
        status, page = await post(http, relay, "/suppression/import", upload(csrf, at_limit))
    assert status == 200 and "1 added" in page
    assert await relay.store.suppression_reasons([("ok@example.org", "")]) != [None]


async def test_a_viewer_may_neither_import_nor_remove(relay):
    """victor (viewer) is refused both changes (403, the read-only page); nothing changes."""
    await add_accounts(relay.store)
    await relay.store.add_suppression("kept@example.org", "user_unknown", "hard_bounce")
    http, csrf = await logged_in(relay, "victor", "viewer-test-pass")
    form = {"csrf": csrf, "address": "kept@example.org", "reason": "x", "confirm": "yes"}
    async with http:
        removed = await post(http, relay, "/suppression/remove", form)
        imported = await post(
            http, relay, "/suppression/import", upload(csrf, b"new@example.org\n")
        )
    assert removed[0] == imported[0] == 403 and "Read-only account" in imported[1]
    checks = [("kept@example.org", ""), ("new@example.org", "")]
    assert await relay.store.suppression_reasons(checks) == ["user_unknown", None]
