"""Admin accounts and the admin page's sessions in PostgreSQL (relay/store/accounts.py):
lifetimes, revocation by a password change or a removal, the shared password's sessions, and
a password change racing a login."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from relay.errors import StoreError
from relay.store import QUERIES, Store, create_store
from relay.store.accounts import SESSION_IDLE, SESSION_LIFETIME, session_key

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SHARED = "scrypt$16384$8$1$c2hhcmVk$a2V5"  # stands for [admin] password_hash: never checked here


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[Store]:
    s = await create_store(db_dsn, min_size=1, max_size=4)
    yield s
    await s.close()


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


async def test_accounts_are_added_listed_changed_removed_and_audited(store, db):
    added = await store.add_admin_account("alice", "admin", "hash-a1", T0, "ops")
    assert added is not None and (added.name, added.role, added.accounts_left) == (
        "alice",
        "admin",
        1,
    )
    assert await store.add_admin_account("bob", "viewer", "hash-b1", T0, "ops") is not None
    assert await store.add_admin_account("alice", "viewer", "other", T0, "eve") is None
    listed = await store.admin_accounts(T0)
    assert [(a.name, a.role, a.last_login_at, a.sessions) for a in listed] == [
        ("alice", "admin", None, 0),
        ("bob", "viewer", None, 0),
    ]
    assert await store.admin_account_hashes() == {"alice": "hash-a1", "bob": "hash-b1"}
    later = T0 + timedelta(days=1)
    changed = await store.set_admin_password("bob", "hash-b2", later, "ops")
    assert changed is not None and changed.role == "viewer"
    assert await store.set_admin_password("carol", "hash-c", later, "ops") is None
    [bob] = [a for a in await store.admin_accounts(later) if a.name == "bob"]
    assert bob.password_changed_at == later and bob.created_at == T0
    removed = await store.remove_admin_account("bob", later, "ops")
    assert removed is not None and (removed.role, removed.accounts_left) == ("viewer", 1)
    assert await store.remove_admin_account("bob", later, "ops") is None
    audit = await db.fetch("SELECT actor, action, subject FROM admin_audit ORDER BY id")
    assert [tuple(r) for r in audit] == [
        ("ops", "account.add", "alice"),
        ("ops", "account.add", "bob"),
        ("ops", "account.passwd", "bob"),
        ("ops", "account.remove", "bob"),
    ]


async def test_the_database_refuses_a_bad_name_or_role(store):
    for name, role in (("Alice", "admin"), ("al ice", "admin"), ("", "admin"), ("x", "root")):
        with pytest.raises(StoreError):
            await store.add_admin_account(name, role, "hash", T0, "ops")


async def test_a_session_lives_until_idle_or_its_lifetime_ends(store, db):
    await store.add_admin_account("alice", "viewer", "hash-a", T0, "ops")
    assert await store.start_account_session("sid-1", "csrf-1", T0, "alice", "hash-a") == "viewer"
    seen = await store.admin_session("sid-1", T0 + timedelta(minutes=5), "")
    assert seen is not None and (seen.account, seen.role, seen.csrf) == (
        "alice",
        "viewer",
        "csrf-1",
    )
    assert await store.admin_session("sid-2", T0, "") is None
    # Used now and then, it lives its whole lifetime, and not a second longer.
    at = T0
    while at + SESSION_IDLE / 2 < T0 + SESSION_LIFETIME:
        at += SESSION_IDLE / 2
        assert await store.admin_session("sid-1", at, "") is not None, at
    assert await store.admin_session("sid-1", T0 + SESSION_LIFETIME, "") is None
    # Left alone, it ends after SESSION_IDLE.
    start = T0 + timedelta(days=1)
    await store.start_account_session("sid-3", "csrf-3", start, "alice", "hash-a")
    assert await store.admin_session("sid-3", start + SESSION_IDLE - timedelta(seconds=1), "")
    assert await store.admin_session("sid-3", start + SESSION_IDLE * 2, "") is None
    [login] = await store.admin_accounts(start)
    assert login.last_login_at == start


async def test_a_page_view_writes_last_seen_at_most_once_a_minute(store, db):
    await store.add_admin_account("alice", "admin", "hash-a", T0, "ops")
    await store.start_account_session("sid", "csrf", T0, "alice", "hash-a")

    async def last_seen() -> datetime:
        seen: datetime = await db.fetchval("SELECT last_seen_at FROM admin_sessions")
        return seen

    await store.admin_session("sid", T0 + timedelta(seconds=30), "")
    assert await last_seen() == T0
    await store.admin_session("sid", T0 + timedelta(seconds=90), "")
    assert await last_seen() == T0 + timedelta(seconds=90)


async def test_the_table_keeps_a_hash_of_the_cookie_never_the_cookie(store, db):
    await store.add_admin_account("alice", "admin", "hash-a", T0, "ops")
    cookie = "Zq3-cookie-value-from-secrets-token-urlsafe"
    await store.start_account_session(cookie, "csrf", T0, "alice", "hash-a")
    row = await db.fetchrow("SELECT * FROM admin_sessions")
    assert row["id_hash"] == session_key(cookie) != cookie.encode()
    assert cookie not in repr(dict(row))


async def test_a_new_password_or_removal_ends_that_accounts_sessions_only(store):
    await store.add_admin_account("alice", "admin", "hash-a", T0, "ops")
    await store.add_admin_account("bob", "viewer", "hash-b", T0, "ops")
    for sid, name, hashed in (("a1", "alice", "hash-a"), ("a2", "alice", "hash-a")):
        await store.start_account_session(sid, "c", T0, name, hashed)
    await store.start_account_session("b1", "c", T0, "bob", "hash-b")
    now = T0 + timedelta(minutes=1)
    changed = await store.set_admin_password("alice", "hash-a2", now, "ops")
    assert changed is not None and changed.sessions_ended == 2
    assert await store.admin_session("a1", now, "") is None
    assert await store.admin_session("a2", now, "") is None
    assert await store.admin_session("b1", now, "") is not None
    removed = await store.remove_admin_account("bob", now, "ops")
    assert removed is not None and removed.sessions_ended == 1
    assert await store.admin_session("b1", now, "") is None


async def test_a_login_checked_against_an_old_hash_starts_no_session(store, db):
    await store.add_admin_account("alice", "admin", "hash-old", T0, "ops")
    await store.set_admin_password("alice", "hash-new", T0, "ops")
    assert await store.start_account_session("sid", "c", T0, "alice", "hash-old") is None
    assert await store.start_account_session("sid", "c", T0, "gone", "hash-old") is None
    assert await db.fetchval("SELECT count(*) FROM admin_sessions") == 0


async def test_a_password_change_waits_for_a_login_in_flight_then_ends_its_session(store, db_dsn):
    """The race: a login verified against the old hash is writing its session when the
    password changes. The change waits for the login's transaction, then ends the session
    it committed: nobody keeps a session opened with the old password."""
    await store.add_admin_account("alice", "admin", "hash-old", T0, "ops")
    login = await asyncpg.connect(db_dsn)
    try:
        async with login.transaction():
            assert await login.fetchval(QUERIES["admin_account_login"], "alice", "hash-old", T0)
            await login.execute(
                QUERIES["admin_session_insert"],
                session_key("sid"),
                "alice",
                None,
                "c",
                T0,
                T0 + SESSION_LIFETIME,
            )
            change = asyncio.create_task(store.set_admin_password("alice", "hash-new", T0, "ops"))
            await asyncio.sleep(0.5)
            assert not change.done()  # it waits for the login's row lock
        changed = await asyncio.wait_for(change, 10)
    finally:
        await login.close()
    assert changed is not None and changed.sessions_ended == 1
    assert await store.admin_session("sid", T0, "") is None


async def test_a_login_waits_for_a_password_change_in_flight_then_starts_no_session(store, db_dsn):
    await store.add_admin_account("alice", "admin", "hash-old", T0, "ops")
    change = await asyncpg.connect(db_dsn)
    try:
        async with change.transaction():
            await change.execute(QUERIES["admin_account_set_password"], "alice", "hash-new", T0)
            login = asyncio.create_task(
                store.start_account_session("sid", "c", T0, "alice", "hash-old")
            )
            await asyncio.sleep(0.5)
            assert not login.done()
        assert await asyncio.wait_for(login, 10) is None
    finally:
        await change.close()
    assert await store.admin_session("sid", T0, "") is None


async def test_the_shared_passwords_sessions_hold_only_for_its_hash_and_until_an_account(
    store,
):
    await store.start_shared_session("s1", "c1", T0, SHARED)
    seen = await store.admin_session("s1", T0, SHARED)
    assert seen is not None and (seen.account, seen.role) == (None, "admin")
    assert await store.admin_session("s1", T0, SHARED + "x") is None  # the hash changed
    assert await store.admin_session("s1", T0, "") is None  # the key is gone
    await store.start_shared_session("s2", "c2", T0, SHARED)
    added = await store.add_admin_account("alice", "admin", "hash-a", T0, "ops")
    assert added is not None and added.sessions_ended == 2
    assert await store.admin_session("s2", T0, SHARED) is None


async def test_a_login_deletes_dead_sessions_and_the_one_it_replaces(store, db):
    await store.add_admin_account("alice", "admin", "hash-a", T0, "ops")
    later = T0 + SESSION_LIFETIME + timedelta(minutes=1)
    await store.start_account_session("dead", "c", T0, "alice", "hash-a")
    await store.start_account_session("live", "c", later, "alice", "hash-a")
    await store.start_account_session("replaced", "c", later, "alice", "hash-a")
    await store.start_account_session("new", "c", later, "alice", "hash-a", "replaced")
    keys = {r["id_hash"] for r in await db.fetch("SELECT id_hash FROM admin_sessions")}
    assert keys == {session_key("live"), session_key("new")}
    await store.end_admin_session("new")  # a logout
    keys = {r["id_hash"] for r in await db.fetch("SELECT id_hash FROM admin_sessions")}
    assert keys == {session_key("live")}
