"""The bounces report is one export: `bounce-relay report`, the admin page (its table and its
CSV/Excel downloads) and the JSON API give the same columns and rows for the same data.

The relay runs on a clock moved 400 days back; the bounces are seeded relative to it, so the
page and the API find them in their default period (the 30 days before the relay's clock)
and nothing here depends on today's date. The CLI, a real subprocess, is given that period
explicitly."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import openpyxl
import pytest

from relay.config import load_config
from relay.ops.app import Relay
from relay.passwords import hash_password
from relay.reports.export import neutralise
from tests.support.admin import PASSWORD, logged_in
from tests.support.report_seeds import GMAIL_QUOTA, GMAIL_UNKNOWN, YAHOO_FULL, Seeder
from tests.support.scripted import FakeClock

TOKEN = "tok-parity-1"
HOSTILE_TEXT = '452 =cmd|"/C calc"!A0 <b>bold</b> & more'


@pytest.fixture(scope="module")
def hashes() -> tuple[str, str]:
    return hash_password(PASSWORD), hash_password(TOKEN)


@pytest.fixture
def relay_clock() -> FakeClock:
    clock = FakeClock()
    clock.advance(days=-400)
    return clock


@pytest.fixture
def config_path(write_config: Callable[..., Path], db_dsn, hashes) -> Path:
    password_hash, token_hash = hashes
    return write_config(
        f"""
        [smtp]
        listen = "127.0.0.1:0"
        hostname = "relay.test"
        [store]
        dsn = "{db_dsn}"
        [admin]
        listen = "127.0.0.1:0"
        password_hash = "{password_hash}"
        [[admin.tokens]]
        name = "parity"
        hash = "{token_hash}"
        [delivery]
        enabled = false
        """,
        replace_base=True,
    )


@pytest.fixture
async def relay(config_path, db_dsn, relay_clock) -> AsyncIterator[Relay]:
    config = load_config(config_path)
    async with Relay(config, dsn=db_dsn, listen=("127.0.0.1", 0), clock=relay_clock) as r:
        yield r


async def seed(relay: Relay, hour: datetime) -> None:
    """Hours before ``hour`` (the relay's clock): a Gmail quota reply resent twice, a hard
    Gmail unknown user, a Yahoo full mailbox from another IP and From domain, and a reply
    that is a spreadsheet formula with markup in it."""
    s = Seeder(relay.store, prefix="P")
    await s.message("ann@gmail.com", "spring", "news.example.com", hour - timedelta(hours=5))
    await s.bounce(hour - timedelta(hours=5), GMAIL_QUOTA.format(id="a1"), "127.0.0.2")
    await s.bounce(hour - timedelta(hours=4), GMAIL_QUOTA.format(id="b2"), "127.0.0.2")
    await s.finish(hour - timedelta(hours=4))
    await s.message("gone@gmail.com", "spring", "news.example.com", hour - timedelta(hours=3))
    await s.bounce(hour - timedelta(hours=3), GMAIL_UNKNOWN.format(id="c3"), "127.0.0.2", "hard")
    await s.message("cid@yahoo.com", "<b>autumn</b>", "shop.example.com", hour - timedelta(days=2))
    await s.bounce(hour - timedelta(days=2), YAHOO_FULL.format(rcpt="cid@yahoo.com"), "127.0.0.3")
    await s.finish(hour - timedelta(days=2))
    await s.message("x@evil.example", "=1+1", "=evil.example", hour - timedelta(hours=1))
    await s.bounce(hour - timedelta(hours=1), HOSTILE_TEXT, "127.0.0.3")
    await s.finish(hour - timedelta(hours=1))


async def run_cli(config: Path, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "report",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()


class _Tables(HTMLParser):
    """Every <table> of a page, each a list of its rows (header, body, total), each row a list
    of its cells' texts."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _as_page(header: list[str], row: list[str]) -> list[str]:
    """A report row as the page shows it: the bounce rate in percent, marked above the
    page's default threshold (5%)."""
    cells = dict(zip(header, row, strict=True))
    attempts = int(cells["attempts"])
    if attempts:
        percent = 100 * int(cells["amount"]) / attempts
        mark = " above threshold" if percent > 5 else ""
        cells["bounce_rate"] = f"{percent:.2f}%{mark}"
    return list(cells.values())


def _utc_text(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _xlsx_rows(data: bytes) -> list[list[object]]:
    sheet = openpyxl.load_workbook(io.BytesIO(data))["bounces"]
    return [[c.value for c in row] for row in sheet.iter_rows()]


@pytest.mark.parametrize(("group_by", "api_group"), [("from-domain", "from_domain"), ("ip", "ip")])
async def test_cli_page_and_api_give_the_same_report(
    relay, relay_clock, config_path, tmp_path, group_by, api_group
):
    """Same header and rows from the CLI's CSV, table and XLSX, the page's table and
    downloads, and the API's JSON, CSV and XLSX; CSV bytes identical everywhere."""
    hour = relay_clock().replace(minute=0, second=0, microsecond=0)
    await seed(relay, hour)
    # The default period of the page and the API, from the relay's clock.
    end = hour + timedelta(hours=1)
    start = end - timedelta(days=30)
    period = ("--from", start.isoformat(), "--to", end.isoformat())
    common = (*period, "--type", "all", "--group-by", group_by)
    cli_csv, cli_xlsx, cli_table = (tmp_path / n for n in ("r.csv", "r.xlsx", "r.txt"))
    await run_cli(config_path, *common, "--format", "csv", "-o", str(cli_csv))
    await run_cli(config_path, *common, "--format", "xlsx", "-o", str(cli_xlsx))
    await run_cli(config_path, *common, "--format", "table", "-o", str(cli_table))

    base = f"http://127.0.0.1:{relay.admin_port}"
    api = f"{base}/api/v1/reports/bounces?type=all&group_by={api_group}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(api, headers=bearer) as r:
            assert r.status == 200
            api_json = json.loads(await r.read())
        async with http.get(api + "&format=csv", headers=bearer) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
            api_csv = await r.read()
        async with http.get(api + "&format=xlsx", headers=bearer) as r:
            assert r.status == 200
            api_xlsx = await r.read()
    browser, _ = await logged_in(relay)
    async with browser:
        page_query = f"?type=all&group_by={group_by}"
        async with browser.get(f"{base}/report{page_query}") as r:
            assert r.status == 200
            page = await r.text()
        async with browser.get(f"{base}/report.csv{page_query}") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert r.headers["Content-Disposition"] == 'attachment; filename="bounces.csv"'
            page_csv = await r.read()
        async with browser.get(f"{base}/report.xlsx{page_query}") as r:
            assert r.status == 200
            page_xlsx = await r.read()

    # CSV: the same bytes from all three.
    assert cli_csv.read_bytes() == api_csv == page_csv
    header, *rows = list(csv.reader(io.StringIO(api_csv.decode(), newline="")))
    group = "from_domain" if group_by == "from-domain" else "source_ip"
    assert header == [
        group,
        "bounce_text",
        "code",
        "amount",
        "attempts",
        "delivered",
        "bounce_rate",
        "messages",
        "recipient_domains",
        "category",
        "first_seen",
        "last_seen",
    ]
    assert len(rows) == 4  # quota (resent), unknown, Yahoo full, the hostile one
    amount, messages = header.index("amount"), header.index("messages")
    assert sum(int(r[amount]) for r in rows) == 5
    assert sum(int(r[messages]) for r in rows) == 4  # four messages, one row each
    assert any(r[1].startswith("'=cmd") for r in rows)  # the formula, neutralised

    # JSON: the same keys, and the same values (times in ISO 8601, texts as stored).
    assert api_json["group_by"] == group
    assert datetime.fromisoformat(api_json["from"]) == start
    assert [list(item) for item in api_json["rows"]] == [header] * len(rows)
    as_text = [
        [_utc_text(v) if k.endswith("_seen") else str(v) for k, v in item.items()]
        for item in api_json["rows"]
    ]
    assert [[neutralise(cell) for cell in row] for row in as_text] == rows

    # The page's table: the same header and cells, texts as stored (no formula quote), the
    # bounce rate in percent; then the store's total row.
    [shown] = [t for t in _Tables(page).tables if t[0] == header]
    assert shown[:-1] == [header, *(_as_page(header, r) for r in as_text)]
    total_shown = dict(zip(header, shown[-1], strict=True))
    assert (total_shown[group], total_shown["amount"]) == ("total", "5")
    assert total_shown["messages"] == "4"
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page

    # XLSX: the same cells from the CLI, the page and the API; header, rows, total row.
    cli_cells = _xlsx_rows(cli_xlsx.read_bytes())
    assert cli_cells == _xlsx_rows(api_xlsx) == _xlsx_rows(page_xlsx)
    assert cli_cells[0] == header
    assert [[str(v) for v in r[:10]] for r in cli_cells[1:-1]] == [r[:10] for r in rows]
    total = dict(zip(header, cli_cells[-1], strict=True))
    assert (total[group], total["amount"], total["messages"]) == ("total", 5, 4)
    assert total["code"] is None
    assert total["attempts"] == api_json["totals"]["attempts"] > 0

    # The terminal table: the same header, a line per row, the total.
    lines = cli_table.read_text(encoding="utf-8").splitlines()
    assert lines[0].split() == header
    assert len(lines) == 2 + len(rows) + 2
    assert lines[-1].startswith("total")
    assert lines[-1].split()[-9:-4] == [
        str(api_json["totals"][name])
        for name in ("amount", "attempts", "delivered", "bounce_rate", "messages")
    ]
