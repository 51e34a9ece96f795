"""Shaping in the store: each relay's round (the limits and the other relays' use of its
keys in, what changed and its own use out, under one lock), and what `bounce-relay
shaping show` prints. Queries: ``shaping.sql``; the tables: migration 0022.
``policies.shaping`` decides; ``relay.delivery.shaping`` runs the rounds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policies.shaping import Change, Key, Limit, RelayUse
from relay.store.base import StoreBase

__all__ = ["ShapingRow", "ShapingStore", "ShapingWrite", "StoredChange"]

# "brshap": the relays' rounds take turns, so a connection share is computed from what the
# others hold now, never from what two relays each thought was free.
_SHAPING_LOCK = 0x6272_7368_6170


@dataclass(frozen=True)
class ShapingWrite:
    """What one relay's round writes: limits that moved, why, and its own use."""

    limits: Mapping[Key, Limit]
    changes: Sequence[tuple[Key, Change]]
    use: Mapping[Key, RelayUse]


@dataclass(frozen=True)
class ShapingRow:
    """One key as `shaping show` prints it: the stored limit (None: never learned, the
    configured ceiling holds) and the cluster's use of it over the last seconds."""

    key: Key
    limit: Limit | None
    updated_at: datetime | None
    relays: int
    held: int
    open_connections: int
    sent: float
    accepted: float
    wanted: float


@dataclass(frozen=True)
class StoredChange:
    at: datetime
    change: Change
    relay: str


def _limit(r: Any) -> Limit:
    return Limit(
        connections=r["connections"],
        rate=r["rate"],
        refused_connections=r["refused_connections"],
        refused_rate=r["refused_rate"],
        changed_at=r["changed_at"],
        grown_at=r["grown_at"],
    )


class ShapingStore(StoreBase):
    async def shaping_round(
        self,
        owner: str,
        now: datetime,
        fresh_since: datetime,
        keys: Sequence[Key],
        decide: Callable[[dict[Key, Limit], dict[Key, dict[str, RelayUse]]], ShapingWrite],
    ) -> ShapingWrite:
        """One round of relay ``owner``: read the stored limits of ``keys`` and the other
        relays' use of them written since ``fresh_since``, ask ``decide`` (pure, no I/O),
        and write what it returns, all in one transaction under the shaping lock."""
        groups = [k.group for k in keys]
        ips = [k.source_ip for k in keys]
        async with self._transaction("run a shaping round") as tx:
            await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", _SHAPING_LOCK)
            limits = {
                Key(r["grp"], r["source_ip"]): _limit(r)
                for r in await tx.rows("shaping_limits_of", groups, ips)
            }
            others: dict[Key, dict[str, RelayUse]] = {}
            for r in await tx.rows("shaping_others_use", groups, ips, fresh_since, owner):
                others.setdefault(Key(r["grp"], r["source_ip"]), {})[r["owner"]] = RelayUse(
                    held=r["held"],
                    open_connections=r["open_connections"],
                    sent=r["sent"],
                    accepted=r["accepted"],
                    wanted=r["wanted"],
                )
            write = decide(limits, others)
            if write.limits:
                saved = list(write.limits.items())
                await tx.status(
                    "shaping_save_limits",
                    [k.group for k, _ in saved],
                    [k.source_ip for k, _ in saved],
                    [limit.connections for _, limit in saved],
                    [limit.rate for _, limit in saved],
                    [limit.refused_connections for _, limit in saved],
                    [limit.refused_rate for _, limit in saved],
                    [limit.changed_at for _, limit in saved],
                    [limit.grown_at for _, limit in saved],
                    now,
                )
            if write.changes:
                await tx.status(
                    "shaping_log_changes",
                    [k.group for k, _ in write.changes],
                    [k.source_ip for k, _ in write.changes],
                    [c.what for _, c in write.changes],
                    [c.old for _, c in write.changes],
                    [c.new for _, c in write.changes],
                    [c.cause for _, c in write.changes],
                    [c.reply[:500] for _, c in write.changes],
                    owner,
                    now,
                )
            use = list(write.use.items())
            await tx.status(
                "shaping_save_use",
                owner,
                [k.group for k, _ in use],
                [k.source_ip for k, _ in use],
                [u.held for _, u in use],
                [u.open_connections for _, u in use],
                [u.sent for _, u in use],
                [u.accepted for _, u in use],
                [u.wanted for _, u in use],
                now,
            )
        return write

    async def forget_shaping_use(self, owner: str) -> None:
        """Relay ``owner`` stops: its use rows go."""
        await self._status(
            "shaping_save_use",
            owner,
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            None,
            what="forget a relay's shaping use",
        )

    async def prune_shaping(self, quiet_before: datetime, changes_before: datetime) -> None:
        """Forget the use of relays quiet since ``quiet_before`` and older changes."""
        await self._status(
            "shaping_prune", quiet_before, changes_before, what="prune shaping state"
        )

    async def shaping_overview(self, fresh_since: datetime) -> list[ShapingRow]:
        """Every stored limit and every key in use since ``fresh_since``."""
        rows = await self._rows("shaping_overview", fresh_since, what="read the shaping limits")
        return [
            ShapingRow(
                key=Key(r["grp"], r["source_ip"]),
                limit=_limit(r) if r["connections"] is not None else None,
                updated_at=r["updated_at"],
                relays=r["relays"],
                held=r["held"],
                open_connections=r["open_connections"],
                sent=r["sent"],
                accepted=r["accepted"],
                wanted=r["wanted"],
            )
            for r in rows
        ]

    async def shaping_changes(self, key: Key, limit: int = 10) -> list[StoredChange]:
        """The last ``limit`` changes of ``key``'s limit, newest first."""
        rows = await self._rows(
            "shaping_recent_changes",
            key.group,
            key.source_ip,
            limit,
            what="read the shaping changes",
        )
        return [
            StoredChange(
                r["at"],
                Change(r["what"], r["old_value"], r["new_value"], r["cause"], r["reply"]),
                r["relay"],
            )
            for r in rows
        ]
