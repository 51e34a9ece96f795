"""The kinds of value a config key takes: how each is read and what it expects.

A ``Value`` pairs a converter with ``expects``, the phrase that names what it takes
("a positive integer"). The phrase is the docs' "value" column and, for the simple
kinds, the error itself ("must be a positive integer, got 0"); the parsers
(durations, sizes, addresses) say what they expect in their own errors.

Converters raise ``ValueError`` or ``TypeError``; ``relay.config`` turns that into a
``ConfigError`` naming the key and its line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from policies.addresses import ascii_domain, domain_pattern

__all__ = [
    "BOOL",
    "CIDRS",
    "CONFIG_FILE",
    "DOMAIN",
    "DOMAINS",
    "DOMAIN_PATTERNS",
    "DURATION",
    "HOST_PORT",
    "IPS",
    "NUMBER",
    "PATH",
    "PORT",
    "POSITIVE_DURATION",
    "POSITIVE_INT",
    "POSITIVE_NUMBER",
    "PROCESSES",
    "SHARE",
    "SIZE",
    "STRING",
    "Value",
    "checked",
    "list_of",
    "one_of",
    "parse_duration",
    "parse_hostport",
    "parse_size",
    "resolve_env",
]

T = TypeVar("T")
U = TypeVar("U")
T_co = TypeVar("T_co", covariant=True)
E = TypeVar("E", bound=StrEnum)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(KB|MB|GB|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_HOST_PORT = re.compile(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?")


def parse_duration(value: str) -> timedelta:
    """ "90s" -> 90 seconds; raise ValueError with the accepted form."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(
            f"bad duration {value!r}: use a number with ms, s, m, h or d, e.g. '30s', '5m'"
        )
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def parse_size(value: str | int) -> int:
    """ "35MB" -> bytes; a bare integer is bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or int(match[1]) <= 0:
        raise ValueError(f"bad size {value!r}: use a positive number with KB or MB, e.g. '35MB'")
    return int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """ "127.0.0.1:2525", "[::1]:2525", "mx.example.net" (with a default port)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"bad address {value!r}: use host:port")
    m = _HOST_PORT.fullmatch(value.strip())
    if not m:
        raise ValueError(f"bad address {value!r}: use host:port, or [ipv6]:port")
    host = m[1] or m[3]
    port_text = m[2] or m[4]
    if port_text is None:
        if default_port is None:
            raise ValueError(f"bad address {value!r}: the port is missing (host:port)")
        return host, default_port
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"bad port in {value!r}: must be 0-65535")
    return host, port


def resolve_env(value: Any) -> Any:
    """A string written ``"env:NAME"`` stands for that environment variable."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


@dataclass(frozen=True)
class Value(Generic[T_co]):
    """How a key's TOML value is read (``convert``) and what it takes (``expects``).

    ``doc`` is the docs' "value" column where plain ``expects`` would say less (the
    words of a choice, each as code).
    """

    expects: str
    convert: Callable[[Any], T_co]
    doc: str = ""

    @property
    def described(self) -> str:
        return self.doc or self.expects

    def then(self, finish: Callable[[T_co], U]) -> Value[U]:
        """The same value, handed to ``finish`` once read (a tuple into a frozenset, say)."""
        convert = self.convert
        return Value(self.expects, lambda raw: finish(convert(raw)), self.doc)

    def but(self, check: Callable[[T_co], str | None]) -> Value[T_co]:
        """The same value, refused when ``check`` returns why (checks beyond the kind)."""
        convert = self.convert

        def read(raw: Any) -> T_co:
            value = convert(raw)
            why = check(value)
            if why:
                raise ValueError(why)
            return value

        return Value(self.expects, read, self.doc)


def checked(expects: str, accepts: Callable[[Any], bool]) -> Value[Any]:
    """A plain TOML value: refused with "must be <expects>, got <value>"."""

    def read(raw: Any) -> Any:
        if not accepts(raw):
            raise ValueError(f"must be {expects}, got {raw!r}")
        return raw

    return Value(expects, read)


def _is_int(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _is_number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def one_of(choices: type[E], only: tuple[E, ...] = ()) -> Value[E]:
    """One of an enum's values (or of ``only`` of them), read as the enum member."""
    words = tuple(member.value for member in (only or tuple(choices)))

    def read(raw: Any) -> E:
        if raw not in words:
            raise ValueError(f"must be one of {', '.join(words)}; got {raw!r}")
        return choices(raw)

    listed = ", ".join(f"`{word}`" for word in words[:-1]) + f" or `{words[-1]}`"
    return Value(f"one of {', '.join(words)}", read, listed)


def list_of(item: Value[T], expects: str) -> Value[tuple[T, ...]]:
    """A TOML array of ``item`` (a single value counts as a list of one); errors say which."""

    def read(raw: Any) -> tuple[T, ...]:
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for i, each in enumerate(items):
            try:
                out.append(item.convert(resolve_env(each)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"item {i}: {exc}") from exc
        return tuple(out)

    return Value(expects, read, f"{expects}: {item.doc}" if item.doc else "")


STRING: Value[str] = checked("a string", lambda raw: isinstance(raw, str))
BOOL: Value[bool] = checked("true or false", lambda raw: isinstance(raw, bool))
POSITIVE_INT: Value[int] = checked("a positive integer", lambda raw: _is_int(raw) and raw > 0)
PORT: Value[int] = checked("a port number 1-65535", lambda raw: _is_int(raw) and 0 < raw < 65536)
NUMBER: Value[float] = checked("a number", _is_number).then(float)
POSITIVE_NUMBER: Value[float] = checked(
    "a positive number", lambda raw: _is_number(raw) and raw > 0
).then(float)
SHARE: Value[float] = checked(
    "a share between 0 and 1 (e.g. 0.5)", lambda raw: _is_number(raw) and 0 < raw <= 1
).then(float)
NON_NEGATIVE_INT: Value[int] = checked(
    "an integer, 0 or more", lambda raw: _is_int(raw) and raw >= 0
)
SHARE_OR_ZERO: Value[float] = checked(
    "a share between 0 and 1 (e.g. 0.01; 0: none)", lambda raw: _is_number(raw) and 0 <= raw <= 1
).then(float)
PROCESSES: Value[int] = checked(
    '"auto" or a number of processes 1-64',
    lambda raw: raw == "auto" or (_is_int(raw) and 1 <= raw <= 64),
).then(lambda raw: (os.cpu_count() or 1) if raw == "auto" else int(raw))

DURATION: Value[timedelta] = Value("a duration", parse_duration)
POSITIVE_DURATION: Value[timedelta] = DURATION.but(
    lambda d: "must be longer than 0s (e.g. '5m')" if d <= timedelta(0) else None
)
SIZE: Value[int] = Value("a size", parse_size)
HOST_PORT: Value[tuple[str, int]] = Value("host:port", parse_hostport)
# Where a config file names a file, a relative path is relative to the config file;
# relay.config resolves it (the value alone does not know where the config file is).
PATH: Value[Path] = Value("a path", STRING.then(Path).convert)
CONFIG_FILE: Value[Path] = Value("a file", PATH.convert)


def _cidr(raw: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = STRING.convert(raw)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"bad CIDR {raw!r}: {exc}") from exc


def _ip(raw: Any) -> str:
    text = STRING.convert(raw)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise ValueError(f"bad IP address {raw!r}") from exc


def _domain(raw: Any) -> str:
    """A mail domain in the one form every key uses (IDNA 2008 A-labels, policies.addresses)."""
    return ascii_domain(STRING.convert(raw).strip())


CIDRS = list_of(Value("a CIDR", _cidr), "a list of CIDRs")
IPS = list_of(Value("an IP address", _ip), "a list of IP addresses")
DOMAIN: Value[str] = Value("a domain", _domain)
DOMAINS = list_of(DOMAIN, "a list of domains")
DOMAIN_PATTERNS = list_of(
    Value("a domain pattern", lambda raw: domain_pattern(STRING.convert(raw).strip())),
    'a list of domains, "*.domain" or "*"',
)
