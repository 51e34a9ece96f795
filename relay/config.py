"""config.toml -> frozen dataclasses, with every error named by key and line.

Each key is declared once, here, with its default beside it; docs/configuration.md's
config reference uses the same names. ``load_config`` checks every key and
raises one ``ConfigErrors`` listing all problems at once. Any string value may
be written ``"env:NAME"`` to read it from the environment, which is how
secrets (a DSN with a password, AUTH hashes) stay out of the file.

Durations take ``s``, ``m``, ``h``, ``d`` ("90s", "5m"); sizes take ``KB``
and ``MB`` (or a plain byte count).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from policies.addresses import AddressError, ascii_domain, domain_pattern, validate_address
from policies.classify import Category, ClassifyRule, Kind, SuppressOn
from policies.incidents import IncidentRules, IncidentScope
from policies.retry import Backoff, RetryPolicy, RetryRule, SourceChoice
from policies.verp import MIN_SECRET_LENGTH, ReturnPaths
from relay.errors import ConfigError, ConfigErrors

__all__ = [
    "AdminConfig",
    "Config",
    "DeliveryConfig",
    "PoolConfig",
    "RouteConfig",
    "Rules",
    "SmtpConfig",
    "SmtpUser",
    "StoreConfig",
    "WebhookConfig",
    "config_path",
    "load_config",
    "parse_duration",
    "parse_size",
]

CONFIG_ENV = "BOUNCE_RELAY_CONFIG"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(KB|MB|GB|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}

# A relay killed inside the window sends what it holds again: keep that short.
MAX_OUTCOME_WINDOW = timedelta(seconds=1)


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
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", value.strip())
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


# -- dataclasses -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpUser:
    name: str
    password_hash: str


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[str, int] = ("127.0.0.1", 2525)
    hostname: str = field(default_factory=socket.getfqdn)
    allowed_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_message_size: int = 35 * 1024**2
    max_recipients: int = 1000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    auth_required: bool = False
    users: tuple[SmtpUser, ...] = ()
    session_timeout: timedelta = timedelta(minutes=5)  # idle, waiting for the next command
    # Abusive clients (relay/limits.py); counts are per relay process and per session.
    max_connections: int = 500
    data_timeout: timedelta = timedelta(minutes=10)  # the whole DATA phase, 354 to final dot
    min_data_rate: int = 1024  # bytes/s averaged over the DATA phase, once the grace is over
    min_data_rate_grace: timedelta = timedelta(seconds=30)
    max_noops: int = 50  # per session, counted from the last accepted message
    max_rsets: int = 50
    max_invalid_commands: int = 10
    # RFC 5321 §6.3: a loop-detecting threshold SHOULD be "at least 100 Received entries".
    max_hops: int = 100
    # Failed AUTH (535): after this many in one session, 421 and disconnect; a client
    # address with auth_failures_per_client failures inside auth_failure_window is refused
    # AUTH (421) until the window has passed.
    max_auth_failures: int = 3
    auth_failures_per_client: int = 10
    auth_failure_window: timedelta = timedelta(minutes=15)
    # Proxies that speak the PROXY protocol (v1 or v2) to us; empty: off.
    proxy_protocol_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Relay processes sharing the listener (SO_REUSEPORT), each with intake and delivery;
    # one event loop is the ceiling of one process. Default: one per CPU core.
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class StoreConfig:
    dsn: str = ""
    data_dir: Path = Path("var")
    pool_min_size: int = 2
    pool_max_size: int = 10
    commit_batch: int = 256


@dataclass(frozen=True)
class PoolConfig:
    name: str
    source_ips: tuple[str, ...]
    from_domains: frozenset[str] = frozenset()
    campaigns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RouteConfig:
    domains: tuple[str, ...]
    mode: str = "mx"
    hosts: tuple[tuple[str, int], ...] = ()
    pool: str = "default"
    tls: str = "opportunistic"
    username: str = ""
    password: str = ""
    mx_port: int = 25  # mode "mx": the port MX hosts are contacted on (tests use another)
    # Recipients at an address literal (user@[192.0.2.1]) are delivered to that IP only
    # through a route that says so; otherwise RCPT refuses them (550 5.1.2).
    address_literals: bool = False

    def matches(self, domain: str) -> bool:
        return any(
            d in ("*", domain) or (d.startswith("*.") and domain.endswith(d[1:]))
            for d in self.domains
        )


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = True
    concurrency: int = 100
    connections_per_destination: int = 10
    messages_per_connection: int = 100
    connect_timeout: timedelta = timedelta(seconds=30)
    command_timeout: timedelta = timedelta(minutes=5)
    data_timeout: timedelta = timedelta(minutes=10)
    lease: timedelta = timedelta(minutes=15)
    batch: int = 100
    poll_interval: timedelta = timedelta(seconds=1)
    # How long a finished delivery's outcome waits for others to share its commit.
    outcome_window: timedelta = timedelta(milliseconds=20)
    nameservers: tuple[str, ...] = ()
    dns_port: int = 0
    shutdown_grace: timedelta = timedelta(seconds=30)  # 0: the resolver's default (53)


@dataclass(frozen=True)
class AdminToken:
    name: str
    hash: str


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[str, int] = ("127.0.0.1", 8025)
    password_hash: str = ""
    tokens: tuple[AdminToken, ...] = ()
    # Reverse proxies whose X-Forwarded-For names the client (login limits key on it);
    # from anyone else the header is ignored.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class DsnConfig:
    """``[dsn]``: VERP return paths and bounce intake; off while ``domain`` is empty."""

    domain: str = ""
    prefix: str = "bounces"
    secret: str = ""
    # Bounces that match no delivery are kept for inspection: at most this many per client
    # address per hour (the rest are refused with 450), and for this long.
    max_unmatched_per_client: int = 100
    unmatched_retention: timedelta = timedelta(days=7)

    @property
    def return_paths(self) -> ReturnPaths | None:
        if not self.domain:
            return None
        return ReturnPaths(self.domain, self.secret.encode("utf-8"), self.prefix)


WEBHOOK_EVENTS = (
    "delivered",
    "soft_bounce",
    "hard_bounce",
    "non_delivery",
    "suppressed",
    "unsuppressed",
    "incident",
)


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhooks]]`` receiver: events posted as signed JSON from a durable outbox."""

    name: str
    url: str
    events: frozenset[str]
    secret: str
    timeout: timedelta = timedelta(seconds=10)
    max_age: timedelta = timedelta(days=3)  # an event not accepted by then is given up


@dataclass(frozen=True)
class Rules:
    """Everything SIGHUP may swap in one assignment."""

    routes: tuple[RouteConfig, ...]
    pools: tuple[PoolConfig, ...]
    retry: RetryPolicy
    classify_rules: tuple[ClassifyRule, ...]
    suppress_on: SuppressOn
    # [policy] confirm_hard: a recipient-level hard bounce suppresses only when confirmed by
    # a second one this much later (or from another source IP); None: off.
    confirm_after: timedelta | None = None
    dry_run: bool = False  # suppression checks log and count, and refuse nothing
    incidents: IncidentRules = field(default_factory=IncidentRules)


@dataclass(frozen=True)
class Config:
    path: Path
    smtp: SmtpConfig
    store: StoreConfig
    campaign_header: str
    delivery: DeliveryConfig
    admin: AdminConfig
    rules: Rules
    dsn: DsnConfig = DsnConfig()
    log_level: str = "info"
    webhooks: tuple[WebhookConfig, ...] = ()


# -- reading ---------------------------------------------------------------------------------

Key = tuple[str | int, ...]
T = TypeVar("T")


def _name(path: Key) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Lines:
    """Finds the line of a key in the TOML text (tomllib only reports syntax errors)."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def find(self, path: Key) -> int | None:
        tables = [p for p in path[:-1]]
        key = path[-1] if path else None
        header = ".".join(str(p) for p in tables if isinstance(p, str))
        index = next((p for p in tables if isinstance(p, int)), None)
        start = 0
        if header:
            start_line = self._header_line(header, index)
            if start_line is None:
                return None
            start = start_line
            if key is None or isinstance(key, int):
                return start_line
        for number in range(start, len(self._lines)):
            line = self._lines[number].strip()
            if number > start and line.startswith("[") and header:
                break
            if isinstance(key, str) and re.match(rf"{re.escape(key)}\s*=", line):
                return number + 1
        return start or None

    def _header_line(self, header: str, index: int | None) -> int | None:
        seen = -1
        for number, raw in enumerate(self._lines):
            line = raw.strip()
            if line in (f"[{header}]", f"[[{header}]]"):
                seen += 1
                if index is None or seen == index:
                    return number + 1
        return None


class _Reader:
    """Reads one table; records errors instead of raising so all are reported."""

    def __init__(self, data: Any, path: Key, errors: list[ConfigError], lines: _Lines) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.path = path
        self.errors = errors
        self.lines = lines
        self.used: set[str] = set()
        if not isinstance(data, dict):
            self.error((), f"must be a table, got {type(data).__name__}")

    def error(self, key: Key, why: str) -> None:
        full = self.path + key
        self.errors.append(ConfigError(_name(full), why, self.lines.find(full)))

    def get(self, key: str, default: Any, convert: Callable[[Any], T]) -> T:
        """``convert(value)``; the default when absent or bad (the error is recorded).

        ``default`` is typed Any: a default of ``()`` or None stands for any T.
        """
        self.used.add(key)
        if key not in self.data:
            return default  # type: ignore[no-any-return]
        value = self.data[key]
        try:
            value = _resolve_env(value)
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.error((key,), str(exc))
            return default  # type: ignore[no-any-return]

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        return _Reader(self.data.get(key, {}), (*self.path, key), self.errors, self.lines)

    def tables(self, key: str) -> Iterator[_Reader]:
        self.used.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            self.error((key,), "must be an array of tables ([[...]])")
            return
        for i, item in enumerate(items):
            yield _Reader(item, (*self.path, key, i), self.errors, self.lines)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                self.error((key,), "unknown key (check the spelling against docs/configuration.md)")


def _resolve_env(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"must be a port number 1-65535, got {value!r}")
    return value


def _processes(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
        raise ValueError(f'must be "auto" or a number of processes 1-64, got {value!r}')
    return value


def _positive_float(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)


def _list_of(convert: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def read(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            value = [value]
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert(_resolve_env(item)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"item {i}: {exc}") from exc
        return tuple(out)

    return read


def _one_of(*choices: str) -> Callable[[Any], str]:
    def read(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return read


def _cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str(value), strict=False)
    except ValueError as exc:
        raise ValueError(f"bad CIDR {value!r}: {exc}") from exc


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_str(value)))
    except ValueError as exc:
        raise ValueError(f"bad IP address {value!r}") from exc


def _existing_file(base: Path) -> Callable[[Any], Path]:
    def read(value: Any) -> Path:
        path = Path(_str(value))
        if not path.is_absolute():
            path = base / path
        if not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path

    return read


def _duration(value: Any) -> timedelta:
    return parse_duration(_str(value))


def _outcome_window(value: Any) -> timedelta:
    window = _duration(value)
    if window > MAX_OUTCOME_WINDOW:
        raise ValueError(
            f"outcome_window {_str(value)!r} is too long: at most "
            f"'{MAX_OUTCOME_WINDOW.total_seconds():g}s' (a relay that stops in the window "
            "sends those messages again); '0s' turns it off"
        )
    return window


def _lower(value: Any) -> str:
    return _str(value).strip().lower()


def _domain(value: Any) -> str:
    """A mail domain in the one form every key uses (IDNA 2008 A-labels, policies.addresses)."""
    return ascii_domain(_str(value).strip())


def _domain_or_pattern(value: Any) -> str:
    """``*``, ``*.example.com`` or a domain, in the same form."""
    return domain_pattern(_str(value).strip())


# -- sections --------------------------------------------------------------------------------


def _read_smtp(r: _Reader, base: Path) -> SmtpConfig:
    d = SmtpConfig()
    users = []
    for u in r.tables("users"):
        name = u.get("name", "", _str)
        hashed = u.get("password_hash", "", _str)
        if not name or not hashed:
            u.error((), "each [[smtp.users]] needs name and password_hash")
        u.finish()
        users.append(SmtpUser(name, hashed))
    cfg = SmtpConfig(
        listen=r.get("listen", d.listen, lambda v: parse_hostport(_str(v))),
        hostname=r.get("hostname", d.hostname, _str),
        allowed_clients=r.get("allowed_clients", d.allowed_clients, _list_of(_cidr)),
        max_message_size=r.get("max_message_size", d.max_message_size, parse_size),
        max_recipients=r.get("max_recipients", d.max_recipients, _positive_int),
        tls_cert=r.get("tls_cert", None, _existing_file(base)),
        tls_key=r.get("tls_key", None, _existing_file(base)),
        require_tls=r.get("require_tls", False, _bool),
        auth_required=r.get("auth_required", False, _bool),
        users=tuple(users),
        session_timeout=r.get("session_timeout", d.session_timeout, _duration),
        max_connections=r.get("max_connections", d.max_connections, _positive_int),
        data_timeout=r.get("data_timeout", d.data_timeout, _duration),
        min_data_rate=r.get("min_data_rate", d.min_data_rate, parse_size),
        min_data_rate_grace=r.get("min_data_rate_grace", d.min_data_rate_grace, _duration),
        max_noops=r.get("max_noops", d.max_noops, _positive_int),
        max_rsets=r.get("max_rsets", d.max_rsets, _positive_int),
        max_invalid_commands=r.get("max_invalid_commands", d.max_invalid_commands, _positive_int),
        max_hops=r.get("max_hops", d.max_hops, _positive_int),
        max_auth_failures=r.get("max_auth_failures", d.max_auth_failures, _positive_int),
        auth_failures_per_client=r.get(
            "auth_failures_per_client", d.auth_failures_per_client, _positive_int
        ),
        auth_failure_window=r.get("auth_failure_window", d.auth_failure_window, _duration),
        proxy_protocol_from=r.get("proxy_protocol_from", (), _list_of(_cidr)),
        processes=r.get("processes", d.processes, _processes),
    )
    for key in ("session_timeout", "data_timeout"):
        if getattr(cfg, key) <= timedelta(0):
            r.error((key,), "must be longer than 0s (e.g. '5m')")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        r.error(("tls_key",), "tls_cert and tls_key must be set together")
    if cfg.require_tls and cfg.tls_cert is None:
        r.error(("require_tls",), "require_tls needs tls_cert and tls_key")
    if cfg.auth_required and not cfg.users:
        r.error(("auth_required",), "auth_required needs at least one [[smtp.users]]")
    if cfg.users and cfg.tls_cert is None:
        r.error(("users",), "SMTP AUTH is only offered after STARTTLS: set tls_cert and tls_key")
    r.finish()
    return cfg


def _read_store(r: _Reader, base: Path) -> StoreConfig:
    d = StoreConfig()
    data_dir = r.get("data_dir", d.data_dir, lambda v: Path(_str(v)))
    cfg = StoreConfig(
        dsn=r.get("dsn", "", _str),
        data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
        pool_min_size=r.get("pool_min_size", d.pool_min_size, _positive_int),
        pool_max_size=r.get("pool_max_size", d.pool_max_size, _positive_int),
        commit_batch=r.get("commit_batch", d.commit_batch, _positive_int),
    )
    if cfg.pool_min_size > cfg.pool_max_size:
        r.error(("pool_min_size",), "must not exceed pool_max_size")
    r.finish()
    return cfg


def _read_pools(r: _Reader) -> tuple[PoolConfig, ...]:
    pools: list[PoolConfig] = []
    for p in r.tables("pools"):
        pool = PoolConfig(
            name=p.get("name", "", _str),
            source_ips=p.get("source_ips", (), _list_of(_ip)),
            from_domains=frozenset(p.get("from_domains", (), _list_of(_domain))),
            campaigns=frozenset(p.get("campaigns", (), _list_of(_str))),
        )
        if not pool.name:
            p.error(("name",), "every pool needs a name")
        if not pool.source_ips:
            p.error(("source_ips",), "a pool needs at least one source IP")
        if any(q.name == pool.name for q in pools):
            p.error(("name",), f"pool {pool.name!r} is defined twice")
        p.finish()
        pools.append(pool)
    if not pools:
        pools.append(PoolConfig("default", ("127.0.0.1",)))
    return tuple(pools)


def _read_routes(r: _Reader, pools: tuple[PoolConfig, ...]) -> tuple[RouteConfig, ...]:
    routes = []
    names = {p.name for p in pools}
    for t in r.tables("routes"):
        route = RouteConfig(
            domains=t.get("domains", ("*",), _list_of(_domain_or_pattern)),
            mode=t.get("mode", "mx", _one_of("mx", "smarthost", "static")),
            hosts=t.get("hosts", (), _list_of(lambda v: parse_hostport(_str(v), 25))),
            pool=t.get("pool", pools[0].name, _str),
            tls=t.get("tls", "opportunistic", _one_of("opportunistic", "required", "off")),
            username=t.get("username", "", _str),
            password=t.get("password", "", _str),
            mx_port=t.get("mx_port", 25, _port),
            address_literals=t.get("address_literals", False, _bool),
        )
        if route.mode in ("smarthost", "static") and not route.hosts:
            t.error(("hosts",), f"mode {route.mode!r} needs at least one host:port")
        if route.pool not in names:
            t.error(("pool",), f"no [[pools]] named {route.pool!r}")
        t.finish()
        routes.append(route)
    if not routes:
        routes.append(RouteConfig(domains=("*",), pool=pools[0].name))
    return tuple(routes)


def _read_match(r: _Reader) -> dict[str, Any]:
    match = r.sub("match")
    out = {
        "categories": match.get("category", (), _list_of(_str)),
        "enhanced": match.get("enhanced", (), _list_of(_str)),
        "codes": match.get("code", (), _list_of(_positive_int)),
        "domains": match.get("domain", (), _list_of(_domain)),
        "text": match.get("text", None, _str),
    }
    match.finish()
    return out


_DEFAULT_SCHEDULE = tuple(timedelta(minutes=m) for m in (5, 15, 60, 240, 720))


# Retries stretched by up to this share, so that a queue that failed together is spread out.
DEFAULT_SPREAD = 0.1


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _read_retry_rule(
    r: _Reader, name: str, match: dict[str, Any], inherit: RetryRule | None
) -> RetryRule | None:
    """One rule; timing and limits it leaves out come from ``inherit`` (the [retry] default)."""
    schedule: tuple[timedelta, ...] = r.get("schedule", (), _list_of(_duration))
    interval = r.get("interval", None, _duration)
    backoff = r.get("backoff", None, _one_of(*[b.value for b in Backoff]))
    if not schedule and interval is None:
        schedule = inherit.schedule if inherit else _DEFAULT_SCHEDULE
        interval = inherit.interval if inherit else None
        backoff = backoff or (inherit.backoff if inherit else None)
    try:
        return RetryRule.build(
            name,
            categories=match.get("categories", ()),
            enhanced=match.get("enhanced", ()),
            codes=match.get("codes", ()),
            domains=match.get("domains", ()),
            text=match.get("text"),
            schedule=schedule,
            interval=interval,
            backoff=backoff or Backoff.FIXED,
            exponent=r.get("exponent", inherit.exponent if inherit else 2.0, _positive_float),
            random_modifier=r.get(
                "random_modifier", inherit.random_modifier if inherit else 1.0, _positive_float
            ),
            max_attempts=r.get(
                "max_attempts", inherit.max_attempts if inherit else None, _positive_int
            ),
            max_age=r.get("max_age", inherit.max_age if inherit else timedelta(days=3), _duration),
            source=r.get(
                "source", SourceChoice.SAME_IP.value, _one_of(*[s.value for s in SourceChoice])
            ),
            spread=r.get("spread", inherit.spread if inherit else DEFAULT_SPREAD, _number),
        )
    except ValueError as exc:
        r.error((), str(exc))
        return None


def _read_retry(r: _Reader) -> RetryPolicy:
    default = _read_retry_rule(r, "default", {}, None)
    rules: list[RetryRule] = []
    for t in r.tables("rules"):
        name = t.get("name", "", _str)
        if not name:
            t.error(("name",), "every retry rule needs a name")
        rule = _read_retry_rule(t, name or f"rule{len(rules)}", _read_match(t), default)
        t.finish()
        if rule is not None:
            rules.append(rule)
    r.finish()
    if default is None:  # its error is recorded; keep reading the rest
        default = RetryRule.build("default", schedule=_DEFAULT_SCHEDULE)
    return RetryPolicy(default=default, rules=tuple(rules))


def _read_classify(r: _Reader) -> tuple[ClassifyRule, ...]:
    rules: list[ClassifyRule] = []
    for t in r.tables("rules"):
        name = t.get("name", "", _str)
        match = _read_match(t)
        kind = t.get("kind", None, _one_of(*[k.value for k in Kind]))
        category = t.get("category", None, _one_of(*[c.value for c in Category]))
        suppress = t.get("suppress", None, _bool)
        t.finish()
        if not name:
            t.error(("name",), "every classify rule needs a name")
            continue
        try:
            rules.append(
                ClassifyRule.build(
                    name,
                    codes=match["codes"],
                    enhanced=match["enhanced"],
                    domains=match["domains"],
                    text=match["text"],
                    kind=Kind(kind) if kind else None,
                    category=Category(category) if category else None,
                    suppress=suppress,
                )
            )
        except ValueError as exc:
            t.error((), str(exc))
        if match["categories"]:
            t.error(("match", "category"), "classify rules match the reply, not a category")
    r.finish()
    return tuple(rules)


def _read_delivery(r: _Reader) -> DeliveryConfig:
    d = DeliveryConfig()
    cfg = DeliveryConfig(
        enabled=r.get("enabled", d.enabled, _bool),
        concurrency=r.get("concurrency", d.concurrency, _positive_int),
        connections_per_destination=r.get(
            "connections_per_destination", d.connections_per_destination, _positive_int
        ),
        messages_per_connection=r.get(
            "messages_per_connection", d.messages_per_connection, _positive_int
        ),
        connect_timeout=r.get("connect_timeout", d.connect_timeout, _duration),
        command_timeout=r.get("command_timeout", d.command_timeout, _duration),
        data_timeout=r.get("data_timeout", d.data_timeout, _duration),
        lease=r.get("lease", d.lease, _duration),
        batch=r.get("batch", d.batch, _positive_int),
        poll_interval=r.get("poll_interval", d.poll_interval, _duration),
        outcome_window=r.get("outcome_window", d.outcome_window, _outcome_window),
        nameservers=r.get("nameservers", (), _list_of(_ip)),
        dns_port=r.get("dns_port", 0, _port),
        shutdown_grace=r.get("shutdown_grace", d.shutdown_grace, _duration),
    )
    r.finish()
    return cfg


def _read_admin(r: _Reader) -> AdminConfig:
    tokens = []
    for t in r.tables("tokens"):
        tokens.append(AdminToken(t.get("name", "", _str), t.get("hash", "", _str)))
        t.finish()
    cfg = AdminConfig(
        listen=r.get("listen", AdminConfig.listen, lambda v: parse_hostport(_str(v))),
        password_hash=r.get("password_hash", "", _str),
        tokens=tuple(tokens),
        trusted_proxies=r.get("trusted_proxies", (), _list_of(_cidr)),
    )
    r.finish()
    return cfg


def _read_dsn(r: _Reader) -> DsnConfig:
    domain = r.get("domain", "", lambda v: _domain(v) if _str(v).strip() else "")
    prefix = r.get("prefix", "bounces", _verp_prefix)
    secret = r.get("secret", "", _str)
    if domain:
        try:
            validate_address(f"postmaster@{domain}")
        except AddressError as exc:
            r.error(("domain",), f"not a usable mail domain: {exc.why}")
        if len(secret.encode("utf-8")) < MIN_SECRET_LENGTH:
            r.error(
                ("secret",),
                f"[dsn] domain is set, so a secret of at least {MIN_SECRET_LENGTH} bytes is "
                'required to sign return paths (e.g. secret = "env:BOUNCE_RELAY_DSN_SECRET")',
            )
    d = DsnConfig()
    max_unmatched = r.get("max_unmatched_per_client", d.max_unmatched_per_client, _positive_int)
    retention = r.get("unmatched_retention", d.unmatched_retention, _duration)
    r.finish()
    return DsnConfig(
        domain=domain,
        prefix=prefix,
        secret=secret,
        max_unmatched_per_client=max_unmatched,
        unmatched_retention=retention,
    )


def _read_incidents(r: _Reader) -> IncidentRules:
    d = IncidentRules()
    rules = IncidentRules(
        enabled=r.get("enabled", d.enabled, _bool),
        window=r.get("window", d.window, _duration),
        min_recipients=r.get("min_recipients", d.min_recipients, _positive_int),
        min_share=r.get("min_share", d.min_share, _share),
        scope=IncidentScope(r.get("by", d.scope.value, _one_of(*[s.value for s in IncidentScope]))),
        defer=r.get("defer", d.defer, _duration),
        other_ip=r.get("source", "other_ip", _one_of("other_ip", "same_ip")) == "other_ip",
        lift_on_open=r.get("lift_on_open", d.lift_on_open, _bool),
        close_after=r.get("close_after", d.close_after, _duration),
        check_every=r.get("check_every", d.check_every, _duration),
    )
    r.finish()
    return rules


def _share(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
        raise ValueError(f"must be a share between 0 and 1 (e.g. 0.5), got {value!r}")
    return float(value)


def _read_webhooks(root: _Reader) -> tuple[WebhookConfig, ...]:
    hooks: list[WebhookConfig] = []
    for r in root.tables("webhooks"):
        url = r.get("url", "", _webhook_url)
        name = r.get("name", url, _str)
        events = r.get("events", WEBHOOK_EVENTS, _list_of(_one_of(*WEBHOOK_EVENTS)))
        secret = r.get("secret", "", _str)
        if len(secret.encode("utf-8")) < MIN_SECRET_LENGTH:
            r.error(
                ("secret",),
                f"a secret of at least {MIN_SECRET_LENGTH} bytes is required to sign the "
                'events (e.g. secret = "env:BOUNCE_RELAY_WEBHOOK_SECRET")',
            )
        if not url:
            r.error(("url",), "required: the http:// or https:// address events are posted to")
        if any(h.name == name for h in hooks):
            r.error(("name",), f"{name!r} names another webhook too; names must differ")
        hooks.append(
            WebhookConfig(
                name=name,
                url=url,
                events=frozenset(events),
                secret=secret,
                timeout=r.get("timeout", WebhookConfig.timeout, _duration),
                max_age=r.get("max_age", WebhookConfig.max_age, _duration),
            )
        )
        r.finish()
    return tuple(hooks)


def _webhook_url(value: Any) -> str:
    url = _str(value).strip()
    if not re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", url):
        raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
    return url


def _verp_prefix(value: Any) -> str:
    prefix = _str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", prefix):
        raise ValueError(
            "must be 1-31 letters, digits, '.', '_' or '-' (it is the return path's local part)"
        )
    return prefix


def _read(data: dict[str, Any], path: Path, text: str) -> Config:
    errors: list[ConfigError] = []
    root = _Reader(data, (), errors, _Lines(text))
    base = path.parent
    smtp = _read_smtp(root.sub("smtp"), base)
    store = _read_store(root.sub("store"), base)
    campaign = root.sub("campaign")
    header = campaign.get("header", "X-Campaign-ID", _str)
    campaign.finish()
    pools = _read_pools(root)
    routes = _read_routes(root, pools)
    retry = _read_retry(root.sub("retry"))
    classify = _read_classify(root.sub("classify"))
    policy = root.sub("policy")
    suppress_on = SuppressOn(
        policy.get("suppress_on", "recipient", _one_of(*[s.value for s in SuppressOn]))
    )
    confirm_hard = policy.get("confirm_hard", False, _bool)
    confirm_after = policy.get("confirm_after", timedelta(hours=1), _duration)
    dry_run = policy.get("dry_run", False, _bool)
    policy.finish()
    incidents = _read_incidents(root.sub("incidents"))
    webhooks = _read_webhooks(root)
    delivery = _read_delivery(root.sub("delivery"))
    admin = _read_admin(root.sub("admin"))
    dsn = _read_dsn(root.sub("dsn"))
    log = root.sub("log")
    level = log.get("level", "info", _one_of("debug", "info", "warning", "error"))
    log.finish()
    root.finish()
    if errors:
        raise ConfigErrors(str(path), errors)
    rules = Rules(
        routes=routes,
        pools=pools,
        retry=retry,
        classify_rules=classify,
        suppress_on=suppress_on,
        confirm_after=confirm_after if confirm_hard else None,
        dry_run=dry_run,
        incidents=incidents,
    )
    return Config(
        path=path,
        smtp=smtp,
        store=store,
        campaign_header=header,
        delivery=delivery,
        admin=admin,
        rules=rules,
        dsn=dsn,
        log_level=level,
        webhooks=webhooks,
    )


def config_path(explicit: str | None = None) -> Path:
    """--config, else $BOUNCE_RELAY_CONFIG, else ./config.toml."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or "config.toml")


def load_config(path: Path) -> Config:
    """Read and check ``path``; raise ``ConfigErrors`` naming every bad key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigErrors(str(path), [ConfigError("(file)", f"not found: {path}")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors(str(path), [ConfigError("(file)", f"cannot read: {exc}")]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise ConfigErrors(
            str(path), [ConfigError("(syntax)", str(exc), int(line[1]) if line else None)]
        ) from exc
    return _read(data, path.resolve(), text)
