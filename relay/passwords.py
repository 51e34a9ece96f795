"""Password and token checks: scrypt hashes (stdlib only), checked off the event loop.

Format: ``scrypt$N$r$p$<salt b64>$<key b64>``; ``bounce-relay hash-password``
prints one. Verification runs in constant time.

scrypt is slow on purpose (tens of milliseconds and 16 MiB per hash), so the relay never
computes it on the event loop, where it would hold up every SMTP session:

- ``SecretChecker`` answers "which configured secret is this?" for a presented password or
  token. An HMAC of the presented secret (a per-process random key, microseconds) looks it
  up in a bounded cache of secrets verified before and one of secrets refused before; only
  a secret never seen runs scrypt, in a worker thread, at most ``concurrency`` at a time and
  at most ``max_waiting`` more queued (past that: ``CheckerBusy``, answer "try later").
  Identical secrets presented at once share one check. One check hashes the secret against
  every candidate (constant work: the time says nothing about which one matched).
- ``AttemptLimit`` counts failed checks per client in a window. Callers reserve an attempt
  before they await anything and release it on success, so parallel guesses cannot all pass
  the check before the first failure is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import secrets
from collections import OrderedDict
from collections.abc import Collection, Iterable
from datetime import timedelta

from relay.clock import Clock, utc_now

__all__ = [
    "AttemptLimit",
    "CheckerBusy",
    "SecretChecker",
    "hash_password",
    "verify_password",
]

_N, _R, _P = 2**14, 8, 1

# Checked when no configured secret is a candidate (an unknown SMTP AUTH user), so that an
# unknown name costs the same time as a known one with a wrong password.
_DECOY = "scrypt$16384$8$1$1pGFTzLd3Cyuwqkzp3eBHw==$D5tjL9pUJcbdx69CMGuAVvmcddETE1m7NUQVqBotmwE="


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(
        [
            "scrypt",
            str(_N),
            str(_R),
            str(_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(key).decode(),
        ]
    )


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches ``hashed``; False for a wrong password or a bad hash.

    Slow on purpose: call it in a worker thread (``SecretChecker`` does)."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = hashed.split("$")
        if scheme != "scrypt":
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        # Bytes that are not UTF-8 (an HTTP header, decoded with surrogateescape) cannot be
        # a configured secret: hash_password only ever took valid text.
        candidate = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(key), maxmem=2**27
        )
    except (ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        return False
    return hmac.compare_digest(candidate, key)


class CheckerBusy(Exception):
    """Too many different secrets are being checked already: answer "try again later"."""


class _Recent:
    """A bounded map that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, str | None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def get(self, key: bytes) -> str | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: bytes, value: str | None = None) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _first_match(secret: str, candidates: tuple[tuple[str | None, str], ...]) -> str | None:
    """The name of the first hash ``secret`` matches. Every hash is computed, even after a
    match, so the time taken does not tell which candidate it was."""
    found = None
    for name, hashed in candidates:
        if verify_password(secret, hashed) and found is None:
            found = name
    return found


class SecretChecker:
    """Checks presented secrets against named scrypt hashes without blocking the event loop.

    ``hashes`` pairs a name (an API token's name, an SMTP user, "admin") with its hash; a
    name may appear more than once (each hash counts); empty hashes are ignored. ``among``
    narrows a check to some names (SMTP AUTH: the login); None means all. ``scrypt_runs``
    counts the hashes computed (observable by tests and operators); ``in_flight`` the checks
    running or waiting for a thread.
    """

    def __init__(
        self,
        hashes: Iterable[tuple[str, str]],
        *,
        concurrency: int = 2,
        max_waiting: int = 16,
        remember: int = 1024,
        remember_bad: int = 4096,
    ) -> None:
        self._hashes = tuple((name, hashed) for name, hashed in hashes if hashed)
        self._key = secrets.token_bytes(32)
        self._verified = _Recent(remember)
        self._refused = _Recent(remember_bad)
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + max_waiting
        self._checks: dict[bytes, asyncio.Future[str | None]] = {}
        self.scrypt_runs = 0

    @property
    def in_flight(self) -> int:
        return len(self._checks)

    def known(self, secret: str, among: Collection[str] | None = None) -> str | None:
        """The name ``secret`` was verified as before (no hashing); None if not verified."""
        return self._verified.get(self._digest(secret, among))

    async def match(self, secret: str, among: Collection[str] | None = None) -> str | None:
        """The name whose hash ``secret`` matches, or None. A secret seen before is answered
        from memory; a new one costs one worker-thread check (shared with identical secrets
        presented meanwhile). Raises ``CheckerBusy`` when ``concurrency + max_waiting``
        different checks are running or waiting already."""
        digest = self._digest(secret, among)
        name = self._verified.get(digest)
        if name is not None:
            return name
        if digest in self._refused:
            self._refused.put(digest)  # refreshed: a repeated guess stays known
            return None
        check = self._checks.get(digest)
        if check is None:
            if len(self._checks) >= self._capacity:
                raise CheckerBusy(
                    f"{len(self._checks)} password checks running or waiting; try again shortly"
                )
            check = asyncio.ensure_future(self._check(digest, secret, among))
            self._checks[digest] = check
            check.add_done_callback(lambda done: self._finished(digest, done))
        # shielded: a caller that goes away does not cancel the check others may share
        return await asyncio.shield(check)

    def _finished(self, digest: bytes, done: asyncio.Future[str | None]) -> None:
        self._checks.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a lone failure is not reported as unheard

    async def _check(self, digest: bytes, secret: str, among: Collection[str] | None) -> str | None:
        candidates: tuple[tuple[str | None, str], ...] = tuple(
            (name, hashed) for name, hashed in self._hashes if among is None or name in among
        ) or ((None, _DECOY),)
        async with self._slots:
            self.scrypt_runs += len(candidates)
            name = await asyncio.to_thread(_first_match, secret, candidates)
        if name is None:
            self._refused.put(digest)
        else:
            self._verified.put(digest, name)
        return name

    def _digest(self, secret: str, among: Collection[str] | None) -> bytes:
        scope = b"*" if among is None else b"\0".join(sorted(n.encode() for n in among))
        message = scope + b"\0\0" + secret.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()


class AttemptLimit:
    """At most ``attempts`` failed checks per client within ``window`` of the relay's clock.

    ``reserve`` counts an attempt before the check (False: over the limit, do not check);
    ``release`` takes it back when the check succeeded or never happened. At most
    ``max_clients`` clients are remembered, the least recently seen forgotten first.
    """

    def __init__(
        self,
        attempts: int,
        window: timedelta,
        clock: Clock = utc_now,
        max_clients: int = 10_000,
    ) -> None:
        self.attempts = attempts
        self.window = window.total_seconds()
        self._clock = clock
        self._max_clients = max_clients
        self._seen: dict[str, list[float]] = {}

    def reserve(self, client: str) -> bool:
        now = self._clock().timestamp()
        recent = [t for t in self._seen.pop(client, ()) if now - t < self.window]
        self._seen[client] = recent  # re-inserted: the dict's order is least recent first
        if len(recent) >= self.attempts:
            return False
        recent.append(now)
        while len(self._seen) > self._max_clients:
            del self._seen[next(iter(self._seen))]
        return True

    def release(self, client: str) -> None:
        recent = self._seen.get(client)
        if recent:
            recent.pop()

    def retry_after(self, client: str) -> int:
        """Whole seconds until the client's oldest counted attempt leaves the window (>= 1)."""
        recent = self._seen.get(client)
        if not recent:
            return 1
        left = self.window - (self._clock().timestamp() - recent[0])
        return max(1, math.ceil(left))
