"""Password hashes for SMTP AUTH users and the admin page (scrypt, stdlib only).

Format: ``scrypt$N$r$p$<salt b64>$<key b64>``; ``bounce-relay hash-password``
prints one. Verification runs in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "verify_password"]

_N, _R, _P = 2**14, 8, 1


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
    """True when ``password`` matches ``hashed``; False for a wrong password or a bad hash."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = hashed.split("$")
        if scheme != "scrypt":
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        candidate = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(key), maxmem=2**27
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, key)
