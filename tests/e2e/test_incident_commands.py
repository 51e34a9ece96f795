"""incidents, suppression why, allowlist and scoped entries from the command line, against a
live relay whose scripted upstream produces an incident."""

from __future__ import annotations

import json
import textwrap

import asyncpg
import pytest

from relay.config import load_config
from relay.ops.app import Relay
from tests.support.cli import rcpt_code, run
from tests.support.delivery import delivery_config, eventually, send
from tests.support.scripted import ScriptedUpstream

BLOCK = "550 5.7.1 Service refused: message from [127.0.0.2] rejected by policy (ref 4711)"


@pytest.fixture
async def upstream():
    async with ScriptedUpstream() as up:
        yield up


@pytest.fixture
async def db(db_dsn):
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


@pytest.fixture
def config_path(db_dsn, write_config, upstream):
    policy = """
    [policy]
    suppress_on = "any_5xx"

    [incidents]
    min_recipients = 5
    check_every = "1h"

    [store]
    """
    text = (
        delivery_config(upstream.port, source_ips='"127.0.0.2"')
        + textwrap.dedent(policy)
        + f'dsn = "{db_dsn}"\n'
    )
    return write_config(text, replace_base=True)


async def test_incident_why_release_allowlist_and_scope(config_path, db_dsn, upstream, db):
    upstream.rcpt_default = BLOCK
    addresses = [f"u{i}@example.org" for i in range(8)]
    async with Relay(load_config(config_path), dsn=db_dsn, listen=("127.0.0.1", 0)) as relay:
        await send(relay, addresses)
        await eventually(lambda: _bounced(db, len(addresses)))
        assert relay.incident_watch is not None
        await relay.incident_watch.check()

        listed = await run(config_path, "incidents", "list")
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()
        fields = dict(zip(header.split("\t"), row.split("\t"), strict=True))
        assert (fields["state"], fields["source_ip"], fields["recipients"]) == (
            "open",
            "127.0.0.2",
            "8",
        )
        assert fields["lifted"] == "8"
        incident_id = fields["id"]

        why = await run(config_path, "suppression", "why", "U3@Example.org")
        assert why.returncode == 0, why.stderr
        assert "entries  none: mail to this address goes out" in why.stdout
        assert f"incident={incident_id} (open)" in why.stdout
        assert "ip=127.0.0.2" in why.stdout and "category=" in why.stdout
        assert "reply:    " + BLOCK in why.stdout
        assert "incident detection suppression.remove" in why.stdout
        as_json = json.loads(
            (await run(config_path, "suppression", "why", "u3@example.org", "--json")).stdout
        )
        [bounce] = as_json["bounces"]
        assert (bounce["code"], bounce["source_ip"], bounce["campaign"]) == (550, "127.0.0.2", "c1")
        assert bounce["incident_id"] == int(incident_id)

        released = await run(
            config_path, "incidents", "release", incident_id, "--reason", "fixed", "--actor", "ops"
        )
        assert released.returncode == 0, released.stderr
        assert "0 suppressions lifted" in released.stdout
        again = await run(config_path, "incidents", "release", incident_id, "--reason", "x")
        assert again.returncode == 1 and "released already" in again.stderr
        shown = await run(config_path, "incidents", "show", incident_id)
        assert "released_by          ops" in shown.stdout

        # Allowlist: a domain, listed, then removed; bad entries are refused.
        added = await run(config_path, "allowlist", "add", "Partner.Example", "--reason", "vip")
        assert added.returncode == 0 and "partner.example: allowlisted" in added.stdout
        assert "partner.example\t" in (await run(config_path, "allowlist", "list")).stdout
        bad = await run(config_path, "allowlist", "add", "not a domain", "--reason", "x")
        assert bad.returncode == 2 and "neither an address nor a domain" in bad.stderr
        removed = await run(
            config_path, "allowlist", "remove", "partner.example", "--reason", "end"
        )
        assert removed.returncode == 0

        # A scoped entry refuses only mail from its sending domain; why shows it.
        scoped = await run(
            config_path,
            "suppression",
            "add",
            "x@example.org",
            "--reason",
            "asked",
            "--scope",
            "shop.example.com",
        )
        assert scoped.returncode == 0, scoped.stderr
        assert await rcpt_code(relay, "x@example.org") == 250  # from s@example.com
        why_scoped = await run(config_path, "suppression", "why", "x@example.org")
        assert "entry    scoped (shop.example.com): manual" in why_scoped.stdout
        bad_scope = await run(
            config_path, "suppression", "add", "x@example.org", "--reason", "r", "--scope", "a@b"
        )
        assert bad_scope.returncode == 2


async def _bounced(db, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'bounced'") == n)
