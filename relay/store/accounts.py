"""Admin accounts and the admin page's sessions (migration 0013). Queries: ``accounts.sql``.

An account has a name, a role (``ROLES``) and an scrypt hash. A session is a random cookie
value the page hands out at login; the table keeps only its SHA-256 (``session_key``), so
a copy of the table logs nobody in. A session lives ``SESSION_LIFETIME`` from its login and
dies sooner when unused for ``SESSION_IDLE``; a password change or the account's removal
ends every session of it in the same transaction, a logout ends one.

The shared ``[admin] password_hash`` of older configs logs in as a built-in admin with no
account row, and only while no account exists: its sessions keep a digest of the hash
they were verified against and stop working when the configured hash changes or the first
account is added (which deletes them too).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from relay.store.base import StoreBase
from relay.store.records import AccountChange, AdminAccount, AdminSession

__all__ = ["ROLES", "SESSION_IDLE", "SESSION_LIFETIME", "AccountStore", "session_key"]

ROLES = ("admin", "viewer")  # admin: everything; viewer: every page, no change
SESSION_LIFETIME = timedelta(hours=8)  # from the login, however busy
SESSION_IDLE = timedelta(hours=2)  # without a request, a session ends sooner


def session_key(session_id: str) -> bytes:
    """What the table keeps of a session's cookie value. Not salted: the value is 256 random
    bits, nothing a dictionary could guess."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


def _shared_digest(shared_hash: str) -> bytes | None:
    return hashlib.sha256(shared_hash.encode()).digest() if shared_hash else None


class AccountStore(StoreBase):
    # --- accounts (the CLI) ---------------------------------------------------------------

    async def add_admin_account(
        self, name: str, role: str, password_hash: str, now: datetime, actor: str
    ) -> AccountChange | None:
        """A new account (audited); None when the name is taken. The shared password's
        sessions end with the first account."""
        row = await self._row(
            "admin_account_add",
            name,
            role,
            password_hash,
            now,
            actor,
            SESSION_IDLE,
            what="add admin account",
        )
        return AccountChange(**dict(row)) if row else None

    async def remove_admin_account(
        self, name: str, now: datetime, actor: str
    ) -> AccountChange | None:
        """Delete an account and its sessions (audited); None when there is no such account."""
        row = await self._row(
            "admin_account_remove", name, now, actor, SESSION_IDLE, what="remove admin account"
        )
        return AccountChange(**dict(row)) if row else None

    async def set_admin_password(
        self, name: str, password_hash: str, now: datetime, actor: str
    ) -> AccountChange | None:
        """A new password; every session of the account ends (audited). None when there is
        no such account."""
        async with self._transaction("change admin password") as tx:
            changed = await tx.row("admin_account_set_password", name, password_hash, now)
            if changed is None:
                return None
            ended = await tx.row("admin_account_end_sessions", name, now, actor, SESSION_IDLE)
            assert ended is not None  # counts: always one row
        return AccountChange(
            changed["name"], changed["role"], ended["sessions_ended"], ended["accounts_left"]
        )

    async def admin_accounts(self, now: datetime) -> list[AdminAccount]:
        """Every account by name, with its sessions live at ``now``."""
        rows = await self._rows(
            "admin_accounts_list", now, SESSION_IDLE, what="list admin accounts"
        )
        return [AdminAccount(**dict(r)) for r in rows]

    # --- logins and sessions (the admin page) ---------------------------------------------

    async def admin_account_hashes(self) -> dict[str, str]:
        """Every account's password hash by name: what a login is checked against."""
        rows = await self._rows("admin_account_hashes", what="read admin accounts")
        return {r["name"]: r["password_hash"] for r in rows}

    async def start_account_session(
        self,
        session_id: str,
        csrf: str,
        now: datetime,
        account: str,
        checked_hash: str,
        replaces: str = "",
    ) -> str | None:
        """A session for ``account``, whose password was checked against ``checked_hash``:
        its role, or None (no session) when the account is gone or its hash is no longer
        that one (a password change raced the check). Ends the session ``replaces`` and
        sessions no longer live."""
        async with self._transaction("start admin session") as tx:
            await tx.status("admin_sessions_clean", now, SESSION_IDLE, session_key(replaces))
            role = await tx.value("admin_account_login", account, checked_hash, now)
            if role is None:
                return None
            await tx.status(
                "admin_session_insert",
                session_key(session_id),
                account,
                None,
                csrf,
                now,
                now + SESSION_LIFETIME,
            )
        return str(role)

    async def start_shared_session(
        self, session_id: str, csrf: str, now: datetime, shared_hash: str, replaces: str = ""
    ) -> None:
        """A session of the built-in admin whose password was checked against the shared
        ``shared_hash``. Ends the session ``replaces`` and sessions no longer live."""
        async with self._transaction("start admin session") as tx:
            await tx.status("admin_sessions_clean", now, SESSION_IDLE, session_key(replaces))
            await tx.status(
                "admin_session_insert",
                session_key(session_id),
                None,
                _shared_digest(shared_hash),
                csrf,
                now,
                now + SESSION_LIFETIME,
            )

    async def admin_session(
        self, session_id: str, now: datetime, shared_hash: str
    ) -> AdminSession | None:
        """The live session of this cookie value at ``now``, or None. ``shared_hash``: the
        configured ``[admin] password_hash`` ("" when none), which a shared password's
        session must still match."""
        row = await self._row(
            "admin_session",
            session_key(session_id),
            now,
            SESSION_IDLE,
            _shared_digest(shared_hash),
            what="read admin session",
        )
        return AdminSession(**dict(row)) if row else None

    async def end_admin_session(self, session_id: str) -> None:
        await self._status("admin_session_end", session_key(session_id), what="log out")
