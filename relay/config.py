"""config.toml -> frozen dataclasses, with every error named by key and line.

The keys themselves (TOML name, kind of value, default, meaning) are declared once, in
``relay.config_keys``; this module reads them into the dataclasses the relay uses, whose
defaults come from the same declarations. ``load_config`` checks every key and raises
one ``ConfigErrors`` listing all problems at once. Any string value may be written
``"env:NAME"`` to read it from the environment, which is how secrets (a DSN with a
password, AUTH hashes) stay out of the file.

Durations take ``ms``, ``s``, ``m``, ``h``, ``d`` ("90s", "5m"); sizes take ``KB`` and
``MB`` (or a plain byte count).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from policies.addresses import AddressError, validate_address
from policies.classify import ClassifyRule, SuppressOn
from policies.guardrails import Canary, GuardrailRules, Threshold, Thresholds
from policies.incidents import IncidentRules
from policies.retry import RetryPolicy, RetryRule, SourceChoice
from policies.shaping import ShapingRules
from policies.verp import MIN_SECRET_LENGTH, ReturnPaths
from relay.config_keys import (
    MAX_EVENT_PARTITIONS,
    MAX_OUTCOME_WINDOW,
    WEBHOOK_EVENTS,
    Admin,
    AdminTokens,
    Campaign,
    Classify,
    ClassifyRules,
    Delivery,
    Dsn,
    Guardrails,
    Incidents,
    Key,
    Log,
    LogLevel,
    Match,
    PartitionWidth,
    Policy,
    Pools,
    RecipientAction,
    Recipients,
    Retention,
    Retry,
    RetryRules,
    Root,
    RouteMode,
    Routes,
    Section,
    Shaping,
    ShapingGroups,
    Smtp,
    SmtpUsers,
    Store,
    Table,
    TlsPolicy,
    Webhooks,
)
from relay.config_values import parse_duration, parse_hostport, parse_size, resolve_env
from relay.errors import ConfigError, ConfigErrors

__all__ = [
    "MAX_OUTCOME_WINDOW",
    "WEBHOOK_EVENTS",
    "AdminConfig",
    "AdminToken",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "DeliveryConfig",
    "DsnConfig",
    "LogLevel",
    "PartitionWidth",
    "PoolConfig",
    "RecipientAction",
    "RecipientsConfig",
    "RetentionConfig",
    "RouteConfig",
    "RouteMode",
    "Rules",
    "SmtpConfig",
    "SmtpUser",
    "StoreConfig",
    "TlsPolicy",
    "WebhookConfig",
    "config_path",
    "load_config",
    "parse_duration",
    "parse_hostport",
    "parse_size",
]

CONFIG_ENV = "BOUNCE_RELAY_CONFIG"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- dataclasses: defaults from relay.config_keys -------------------------------------------


@dataclass(frozen=True)
class SmtpUser:
    name: str
    password_hash: str


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[str, int] = Smtp.listen.default
    hostname: str = field(default_factory=lambda: Smtp.hostname.default)  # per config read
    allowed_clients: tuple[IPNetwork, ...] = Smtp.allowed_clients.default
    max_message_size: int = Smtp.max_message_size.default
    max_recipients: int = Smtp.max_recipients.default
    tls_cert: Path | None = Smtp.tls_cert.default
    tls_key: Path | None = Smtp.tls_key.default
    require_tls: bool = Smtp.require_tls.default
    auth_required: bool = Smtp.auth_required.default
    users: tuple[SmtpUser, ...] = ()
    session_timeout: timedelta = Smtp.session_timeout.default
    max_connections: int = Smtp.max_connections.default
    data_timeout: timedelta = Smtp.data_timeout.default
    min_data_rate: int = Smtp.min_data_rate.default
    min_data_rate_grace: timedelta = Smtp.min_data_rate_grace.default
    max_noops: int = Smtp.max_noops.default
    max_rsets: int = Smtp.max_rsets.default
    max_invalid_commands: int = Smtp.max_invalid_commands.default
    max_hops: int = Smtp.max_hops.default
    max_auth_failures: int = Smtp.max_auth_failures.default
    auth_failures_per_client: int = Smtp.auth_failures_per_client.default
    auth_failure_window: timedelta = Smtp.auth_failure_window.default
    proxy_protocol_from: tuple[IPNetwork, ...] = Smtp.proxy_protocol_from.default
    processes: int = Smtp.processes.default


@dataclass(frozen=True)
class StoreConfig:
    dsn: str = Store.dsn.default
    data_dir: Path = Store.data_dir.default
    pool_min_size: int = Store.pool_min_size.default
    pool_max_size: int = Store.pool_max_size.default
    commit_batch: int = Store.commit_batch.default


@dataclass(frozen=True)
class PoolConfig:
    name: str
    source_ips: tuple[str, ...]
    from_domains: frozenset[str] = Pools.from_domains.default
    campaigns: frozenset[str] = Pools.campaigns.default


@dataclass(frozen=True)
class RouteConfig:
    domains: tuple[str, ...]
    mode: RouteMode = Routes.mode.default
    hosts: tuple[tuple[str, int], ...] = Routes.hosts.default
    # The reader gives each route the first pool; built in code, the pool [[pools]] has
    # when the file has none.
    pool: str = Pools.when_absent[0]["name"]
    tls: TlsPolicy = Routes.tls.default
    username: str = Routes.username.default
    password: str = Routes.password.default
    mx_port: int = Routes.mx_port.default
    address_literals: bool = Routes.address_literals.default

    def __post_init__(self) -> None:
        # Routes built in code may name the mode and TLS policy as plain strings.
        object.__setattr__(self, "mode", RouteMode(self.mode))
        object.__setattr__(self, "tls", TlsPolicy(self.tls))

    def matches(self, domain: str) -> bool:
        return any(
            d in ("*", domain) or (d.startswith("*.") and domain.endswith(d[1:]))
            for d in self.domains
        )


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = Delivery.enabled.default
    concurrency: int = Delivery.concurrency.default
    connections_per_destination: int = Delivery.connections_per_destination.default
    messages_per_connection: int = Delivery.messages_per_connection.default
    pipelining: bool = Delivery.pipelining.default
    connect_timeout: timedelta = Delivery.connect_timeout.default
    command_timeout: timedelta = Delivery.command_timeout.default
    data_timeout: timedelta = Delivery.data_timeout.default
    lease: timedelta = Delivery.lease.default
    batch: int = Delivery.batch.default
    poll_interval: timedelta = Delivery.poll_interval.default
    outcome_window: timedelta = Delivery.outcome_window.default
    nameservers: tuple[str, ...] = Delivery.nameservers.default
    dns_port: int = Delivery.dns_port.default  # 0: the resolver's default (53)
    shutdown_grace: timedelta = Delivery.shutdown_grace.default


@dataclass(frozen=True)
class AdminToken:
    name: str
    hash: str


@dataclass(frozen=True)
class AdminConfig:
    listen: tuple[str, int] = Admin.listen.default
    password_hash: str = Admin.password_hash.default
    tokens: tuple[AdminToken, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = Admin.trusted_proxies.default


@dataclass(frozen=True)
class DsnConfig:
    """``[dsn]``: VERP return paths and bounce intake; off while ``domain`` is empty."""

    domain: str = Dsn.domain.default
    prefix: str = Dsn.prefix.default
    secret: str = Dsn.secret.default
    max_unmatched_per_client: int = Dsn.max_unmatched_per_client.default
    unmatched_retention: timedelta = Dsn.unmatched_retention.default

    @property
    def return_paths(self) -> ReturnPaths | None:
        if not self.domain:
            return None
        return ReturnPaths(self.domain, self.secret.encode("utf-8"), self.prefix)


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: how long data is kept (relay.ops.maintenance removes it)."""

    events: timedelta = Retention.events.default
    event_partitions: PartitionWidth = Retention.event_partitions.default
    messages: timedelta = Retention.messages.default
    webhook_outbox: timedelta = Retention.webhook_outbox.default
    admin_audit: timedelta | None = Retention.admin_audit.default  # None: kept
    check_every: timedelta = Retention.check_every.default


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhooks]]`` receiver: events posted as signed JSON from a durable outbox."""

    name: str
    url: str
    events: frozenset[str]
    secret: str
    timeout: timedelta = Webhooks.timeout.default
    max_age: timedelta = Webhooks.max_age.default


@dataclass(frozen=True)
class RecipientsConfig:
    """``[recipients]``: the RCPT checks of recipient domains, with ``[delivery]``'s resolver
    (``nameservers``, ``dns_port``), which the domain lookups share with delivery."""

    typo: RecipientAction = Recipients.typo.default
    no_mail_domain: RecipientAction = Recipients.no_mail_domain.default
    lookup_timeout: timedelta = Recipients.lookup_timeout.default
    cache_size: int = Recipients.cache_size.default
    cache_ttl: timedelta = Recipients.cache_ttl.default
    nameservers: tuple[str, ...] = Delivery.nameservers.default
    dns_port: int = Delivery.dns_port.default


def _declared_incident_rules() -> IncidentRules:
    return _read_incidents(_Reader.unwritten(Incidents))


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
    dry_run: bool = Policy.dry_run.default
    # [policy] nxdomain_confirm_after: a domain our resolver says is absent suppresses only
    # when still absent this much later.
    nxdomain_confirm_after: timedelta = Policy.nxdomain_confirm_after.default
    incidents: IncidentRules = field(default_factory=_declared_incident_rules)
    # [recipients]: swapped with the rest, so SIGHUP may turn a check on or off.
    recipients: RecipientsConfig = RecipientsConfig()
    # [guardrails]: thresholds and canary, reloaded with the rest.
    guardrails: GuardrailRules = field(default_factory=GuardrailRules)
    # [shaping]: limits per destination group x source IP shared by the relays.
    shaping: ShapingRules = field(default_factory=ShapingRules)


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
    log_level: str = Log.level.default
    webhooks: tuple[WebhookConfig, ...] = ()
    retention: RetentionConfig = RetentionConfig()


# -- reading ---------------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]
T = TypeVar("T")
_ABSENT: Any = object()


def _name(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Lines:
    """Finds the line of a key in the TOML text (tomllib only reports syntax errors)."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def find(self, path: KeyPath) -> int | None:
        tables = [p for p in path[:-1]]
        key = path[-1] if path else None
        header = ".".join(str(p) for p in tables if isinstance(p, str))
        index = next((p for p in tables if isinstance(p, int)), None)
        start = 0
        if header:
            start_line = self._header_line(header, index)
            if start_line is None:
                # A key of an inline table (match = { ... }): the line of the table's key.
                return self.find(path[:-1]) if len(path) > 2 else None
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
    """Reads one table of a declared ``Section``; records errors instead of raising, so
    that all are reported. Only declared keys can be read."""

    def __init__(
        self,
        data: Any,
        path: KeyPath,
        section: type[Section],
        errors: list[ConfigError],
        lines: _Lines,
        title: str = "config.toml",
    ) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.path = path
        self.section = section
        self.title = title  # the table as the docs name it: [smtp], [[pools]]
        self.errors = errors
        self.lines = lines
        self.used: set[str] = set()
        if not isinstance(data, dict):
            self.error((), f"must be a table, got {type(data).__name__}")

    @classmethod
    def unwritten(cls, section: type[Section]) -> _Reader:
        """A table the file leaves out: every key at its default."""
        return cls({}, (), section, [], _Lines(""))

    def error(self, key: KeyPath, why: str) -> None:
        full = self.path + key
        self.errors.append(ConfigError(_name(full), why, self.lines.find(full)))

    def get(self, key: Key[T], default: T = _ABSENT) -> T:
        """The key's value; its default (or ``default``) when absent or bad (the error is
        recorded). A required key that is missing or empty is an error too."""
        value = self.written(key)
        why = key.fallback.required
        if why and not value and (value is not None or key.name not in self.data):
            self.error((key.name,), why)
        if value is not None:
            return value
        return key.default if default is _ABSENT else default

    def written(self, key: Key[T]) -> T | None:
        """The key's value as written, or None when it is absent or bad (recorded)."""
        if self.section.keys.get(key.name) is not key:
            raise TypeError(f"{key} is not a key of {self.section.__name__}")
        self.used.add(key.name)
        if key.name not in self.data:
            return None
        try:
            return key.value.convert(resolve_env(self.data[key.name]))
        except (ValueError, TypeError) as exc:
            self.error((key.name,), str(exc))
            return None

    def sub(self, table: Table) -> _Reader:
        """A sub-table (``match = {...}``); absent, every key of it at its default."""
        self._declared(table)
        path = (*self.path, table.name)
        in_entry = bool(self.path) and isinstance(self.path[-1], int)
        title = f"`{table.name}` in {self.title}" if in_entry else f"[{_name(path)}]"
        return _Reader(
            self.data.get(table.name, {}), path, table.section, self.errors, self.lines, title
        )

    def each(self, table: Table) -> Iterator[_Reader]:
        """The entries of an array of tables; the section's ``when_absent`` when it has none."""
        self._declared(table)
        items = self.data.get(table.name, [])
        if not isinstance(items, list):
            self.error((table.name,), "must be an array of tables ([[...]])")
            return
        title = f"[[{_name((*self.path, table.name))}]]"
        for i, item in enumerate(items or table.section.when_absent):
            path = (*self.path, table.name, i)
            yield _Reader(item, path, table.section, self.errors, self.lines, title)

    def _declared(self, table: Table) -> None:
        if self.section.tables.get(table.name) is not table:
            raise TypeError(f"{table} is not a table of {self.section.__name__}")
        self.used.add(table.name)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.error((name,), self._unknown(name))

    def _unknown(self, name: str) -> str:
        listed = f"the keys of {self.title}" if self.path else "the tables of config.toml"
        close = difflib.get_close_matches(name, self.section.names(), n=1, cutoff=0.7)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}check the spelling against {listed} in docs/configuration.md)"


def _config_file(r: _Reader, key: Key[Path | None], base: Path) -> Path | None:
    """A file named relative to the config file; it must exist."""
    path = r.get(key)
    if path is None:
        return None
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        r.error((key.name,), f"file not found: {path}")
        return None
    return path


# -- sections --------------------------------------------------------------------------------


def _read_smtp(r: _Reader, base: Path) -> SmtpConfig:
    users = []
    for u in r.each(Smtp.users):
        users.append(SmtpUser(u.get(SmtpUsers.name), u.get(SmtpUsers.password_hash)))
        u.finish()
    cfg = SmtpConfig(
        listen=r.get(Smtp.listen),
        hostname=r.get(Smtp.hostname),
        allowed_clients=r.get(Smtp.allowed_clients),
        max_message_size=r.get(Smtp.max_message_size),
        max_recipients=r.get(Smtp.max_recipients),
        tls_cert=_config_file(r, Smtp.tls_cert, base),
        tls_key=_config_file(r, Smtp.tls_key, base),
        require_tls=r.get(Smtp.require_tls),
        auth_required=r.get(Smtp.auth_required),
        users=tuple(users),
        session_timeout=r.get(Smtp.session_timeout),
        max_connections=r.get(Smtp.max_connections),
        data_timeout=r.get(Smtp.data_timeout),
        min_data_rate=r.get(Smtp.min_data_rate),
        min_data_rate_grace=r.get(Smtp.min_data_rate_grace),
        max_noops=r.get(Smtp.max_noops),
        max_rsets=r.get(Smtp.max_rsets),
        max_invalid_commands=r.get(Smtp.max_invalid_commands),
        max_hops=r.get(Smtp.max_hops),
        max_auth_failures=r.get(Smtp.max_auth_failures),
        auth_failures_per_client=r.get(Smtp.auth_failures_per_client),
        auth_failure_window=r.get(Smtp.auth_failure_window),
        proxy_protocol_from=r.get(Smtp.proxy_protocol_from),
        processes=r.get(Smtp.processes),
    )
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
    data_dir = r.get(Store.data_dir)
    cfg = StoreConfig(
        dsn=r.get(Store.dsn),
        data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
        pool_min_size=r.get(Store.pool_min_size),
        pool_max_size=r.get(Store.pool_max_size),
        commit_batch=r.get(Store.commit_batch),
    )
    if cfg.pool_min_size > cfg.pool_max_size:
        r.error(("pool_min_size",), "must not exceed pool_max_size")
    r.finish()
    return cfg


def _read_pools(root: _Reader) -> tuple[PoolConfig, ...]:
    pools: list[PoolConfig] = []
    for p in root.each(Root.pools):
        pool = PoolConfig(
            name=p.get(Pools.name),
            source_ips=p.get(Pools.source_ips),
            from_domains=p.get(Pools.from_domains),
            campaigns=p.get(Pools.campaigns),
        )
        if pool.name and any(q.name == pool.name for q in pools):
            p.error(("name",), f"pool {pool.name!r} is defined twice")
        p.finish()
        pools.append(pool)
    return tuple(pools)


def _read_routes(root: _Reader, pools: tuple[PoolConfig, ...]) -> tuple[RouteConfig, ...]:
    routes = []
    names = {p.name for p in pools}
    for t in root.each(Root.routes):
        route = RouteConfig(
            domains=t.get(Routes.domains),
            mode=t.get(Routes.mode),
            hosts=t.get(Routes.hosts),
            pool=t.get(Routes.pool, pools[0].name),
            tls=t.get(Routes.tls),
            username=t.get(Routes.username),
            password=t.get(Routes.password),
            mx_port=t.get(Routes.mx_port),
            address_literals=t.get(Routes.address_literals),
        )
        if route.mode != RouteMode.MX and not route.hosts:
            t.error(("hosts",), f"mode {route.mode.value!r} needs at least one host:port")
        if route.pool not in names:
            t.error(("pool",), f"no [[pools]] named {route.pool!r}")
        t.finish()
        routes.append(route)
    return tuple(routes)


def _read_match(rule: _Reader, table: Table) -> dict[str, Any]:
    match = rule.sub(table)
    out = {
        "categories": match.get(Match.category),
        "enhanced": match.get(Match.enhanced),
        "codes": match.get(Match.code),
        "domains": match.get(Match.domain),
        "text": match.get(Match.text),
    }
    match.finish()
    return out


def _read_retry_rule(
    r: _Reader, name: str, match: dict[str, Any], inherit: RetryRule | None
) -> RetryRule | None:
    """One rule; timing and limits it leaves out come from ``inherit`` (the [retry] rule)."""
    schedule = r.written(Retry.schedule) or ()
    interval = r.written(Retry.interval)
    backoff = r.written(Retry.backoff)
    if not schedule and interval is None:
        schedule = inherit.schedule if inherit else Retry.schedule.default
        interval = inherit.interval if inherit else Retry.interval.default
        backoff = backoff or (inherit.backoff if inherit else None)

    def inherited(key: Key[T]) -> T:
        if inherit is None:
            return r.get(key)
        fallback: T = getattr(inherit, key.name)  # RetryRule's fields are named as the keys
        return r.get(key, fallback)

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
            backoff=backoff or Retry.backoff.default,
            exponent=inherited(Retry.exponent),
            random_modifier=inherited(Retry.random_modifier),
            max_attempts=inherited(Retry.max_attempts),
            max_age=inherited(Retry.max_age),
            source=r.get(Retry.source),  # not inherited: a rule's own, else same_ip
            spread=inherited(Retry.spread),
        )
    except ValueError as exc:
        r.error((), str(exc))
        return None


def _read_retry(r: _Reader) -> RetryPolicy:
    default = _read_retry_rule(r, "default", {}, None)
    rules: list[RetryRule] = []
    for t in r.each(Retry.rules):
        name = t.get(RetryRules.name)
        rule = _read_retry_rule(
            t, name or f"rule{len(rules)}", _read_match(t, RetryRules.match), default
        )
        t.finish()
        if rule is not None:
            rules.append(rule)
    r.finish()
    if default is None:  # its error is recorded; keep reading the rest
        default = RetryRule.build("default", schedule=Retry.schedule.default)
    return RetryPolicy(default=default, rules=tuple(rules))


def _read_classify(r: _Reader) -> tuple[ClassifyRule, ...]:
    rules: list[ClassifyRule] = []
    for t in r.each(Classify.rules):
        name = t.get(ClassifyRules.name)
        match = _read_match(t, ClassifyRules.match)
        kind = t.get(ClassifyRules.kind)
        category = t.get(ClassifyRules.category)
        suppress = t.get(ClassifyRules.suppress)
        t.finish()
        if not name:
            continue  # the missing name is recorded
        try:
            rules.append(
                ClassifyRule.build(
                    name,
                    codes=match["codes"],
                    enhanced=match["enhanced"],
                    domains=match["domains"],
                    text=match["text"],
                    kind=kind,
                    category=category,
                    suppress=suppress,
                )
            )
        except ValueError as exc:
            t.error((), str(exc))
        if match["categories"]:
            t.error(("match", "category"), "classify rules match the reply, not a category")
    r.finish()
    return tuple(rules)


def _read_policy(r: _Reader) -> tuple[SuppressOn, timedelta | None, bool, timedelta]:
    suppress_on = r.get(Policy.suppress_on)
    confirm_hard = r.get(Policy.confirm_hard)
    confirm_after = r.get(Policy.confirm_after)
    dry_run = r.get(Policy.dry_run)
    nxdomain_confirm_after = r.get(Policy.nxdomain_confirm_after)
    r.finish()
    return suppress_on, confirm_after if confirm_hard else None, dry_run, nxdomain_confirm_after


def _read_incidents(r: _Reader) -> IncidentRules:
    rules = IncidentRules(
        enabled=r.get(Incidents.enabled),
        window=r.get(Incidents.window),
        min_recipients=r.get(Incidents.min_recipients),
        min_share=r.get(Incidents.min_share),
        scope=r.get(Incidents.by),
        defer=r.get(Incidents.defer),
        other_ip=r.get(Incidents.source) == SourceChoice.OTHER_IP,
        lift_on_open=r.get(Incidents.lift_on_open),
        close_after=r.get(Incidents.close_after),
        check_every=r.get(Incidents.check_every),
    )
    r.finish()
    return rules


def _read_guardrails(r: _Reader) -> GuardrailRules:
    thresholds = {}
    for rate, review, pause in (
        ("bounce", Guardrails.bounce_review, Guardrails.bounce_pause),
        ("hard_bounce", Guardrails.hard_bounce_review, Guardrails.hard_bounce_pause),
        ("unknown_user", Guardrails.unknown_user_review, Guardrails.unknown_user_pause),
        ("complaint", Guardrails.complaint_review, Guardrails.complaint_pause),
    ):
        low, high = r.get(review), r.get(pause)
        if low > high:
            r.error((f"{rate}_review",), f"must not exceed {rate}_pause ({high:g})")
            high = low
        thresholds[rate] = Threshold(low, high)
    rules = GuardrailRules(
        enabled=r.get(Guardrails.enabled),
        thresholds=Thresholds(
            **thresholds,
            min_attempts=r.get(Guardrails.min_attempts),
            min_attempts_complaints=r.get(Guardrails.min_attempts_complaints),
        ),
        canary=Canary(r.get(Guardrails.canary_size), r.get(Guardrails.canary_share)),
        canary_wait=r.get(Guardrails.canary_wait),
        check_every=r.get(Guardrails.check_every),
        recheck=r.get(Guardrails.recheck),
    )
    r.finish()
    return rules


def _read_shaping(r: _Reader) -> ShapingRules:
    groups: dict[str, tuple[int | None, float | None]] = {}
    for t in r.each(Shaping.groups):
        name = t.get(ShapingGroups.name)
        if name in groups:
            t.error(("name",), f"group {name!r} is given twice")
        groups[name] = (
            t.get(ShapingGroups.connections) or None,
            float(t.get(ShapingGroups.messages_per_minute)) or None,
        )
        t.finish()
    rate = r.get(Shaping.messages_per_minute)
    rules = ShapingRules(
        enabled=r.get(Shaping.enabled),
        connections=r.get(Shaping.connections),
        rate=float(rate) if rate else None,
        groups=groups,
        min_rate=float(r.get(Shaping.min_messages_per_minute)),
        sync_every=r.get(Shaping.sync_every),
        calm=r.get(Shaping.calm),
        grow_every=r.get(Shaping.grow_every),
    )
    r.finish()
    return rules


def _read_webhooks(root: _Reader) -> tuple[WebhookConfig, ...]:
    hooks: list[WebhookConfig] = []
    for r in root.each(Root.webhooks):
        url = r.get(Webhooks.url)
        name = r.get(Webhooks.name, url)
        secret = r.get(Webhooks.secret)
        if secret and len(secret.encode("utf-8")) < MIN_SECRET_LENGTH:
            r.error(("secret",), Webhooks.secret.fallback.required)
        if any(h.name == name for h in hooks):
            r.error(("name",), f"{name!r} names another webhook too; names must differ")
        hooks.append(
            WebhookConfig(
                name=name,
                url=url,
                events=r.get(Webhooks.events),
                secret=secret,
                timeout=r.get(Webhooks.timeout),
                max_age=r.get(Webhooks.max_age),
            )
        )
        r.finish()
    return tuple(hooks)


def _read_delivery(r: _Reader) -> DeliveryConfig:
    cfg = DeliveryConfig(
        enabled=r.get(Delivery.enabled),
        concurrency=r.get(Delivery.concurrency),
        connections_per_destination=r.get(Delivery.connections_per_destination),
        messages_per_connection=r.get(Delivery.messages_per_connection),
        pipelining=r.get(Delivery.pipelining),
        connect_timeout=r.get(Delivery.connect_timeout),
        command_timeout=r.get(Delivery.command_timeout),
        data_timeout=r.get(Delivery.data_timeout),
        lease=r.get(Delivery.lease),
        batch=r.get(Delivery.batch),
        poll_interval=r.get(Delivery.poll_interval),
        outcome_window=r.get(Delivery.outcome_window),
        nameservers=r.get(Delivery.nameservers),
        dns_port=r.get(Delivery.dns_port),
        shutdown_grace=r.get(Delivery.shutdown_grace),
    )
    r.finish()
    return cfg


def _read_recipients(r: _Reader, delivery: DeliveryConfig) -> RecipientsConfig:
    cfg = RecipientsConfig(
        typo=r.get(Recipients.typo),
        no_mail_domain=r.get(Recipients.no_mail_domain),
        lookup_timeout=r.get(Recipients.lookup_timeout),
        cache_size=r.get(Recipients.cache_size),
        cache_ttl=r.get(Recipients.cache_ttl),
        nameservers=delivery.nameservers,
        dns_port=delivery.dns_port,
    )
    r.finish()
    return cfg


def _read_admin(r: _Reader) -> AdminConfig:
    tokens = []
    for t in r.each(Admin.tokens):
        tokens.append(AdminToken(t.get(AdminTokens.name), t.get(AdminTokens.hash)))
        t.finish()
    cfg = AdminConfig(
        listen=r.get(Admin.listen),
        password_hash=r.get(Admin.password_hash),
        tokens=tuple(tokens),
        trusted_proxies=r.get(Admin.trusted_proxies),
    )
    r.finish()
    return cfg


def _read_dsn(r: _Reader) -> DsnConfig:
    cfg = DsnConfig(
        domain=r.get(Dsn.domain),
        prefix=r.get(Dsn.prefix),
        secret=r.get(Dsn.secret),
        max_unmatched_per_client=r.get(Dsn.max_unmatched_per_client),
        unmatched_retention=r.get(Dsn.unmatched_retention),
    )
    if cfg.domain:
        try:
            validate_address(f"postmaster@{cfg.domain}")
        except AddressError as exc:
            r.error(("domain",), f"not a usable mail domain: {exc.why}")
        if len(cfg.secret.encode("utf-8")) < MIN_SECRET_LENGTH:
            r.error(
                ("secret",),
                f"[dsn] domain is set, so a secret of at least {MIN_SECRET_LENGTH} bytes is "
                'required to sign return paths (e.g. secret = "env:BOUNCE_RELAY_DSN_SECRET")',
            )
    r.finish()
    return cfg


# The most days one partition of each width holds (a month: 31).
_PARTITION_DAYS = {PartitionWidth.DAY: 1, PartitionWidth.WEEK: 7, PartitionWidth.MONTH: 31}


def _read_retention(r: _Reader) -> RetentionConfig:
    cfg = RetentionConfig(
        events=r.get(Retention.events),
        event_partitions=r.get(Retention.event_partitions),
        messages=r.get(Retention.messages),
        webhook_outbox=r.get(Retention.webhook_outbox),
        admin_audit=r.get(Retention.admin_audit),
        check_every=r.get(Retention.check_every),
    )
    width = cfg.event_partitions
    spanned = cfg.events.days // _PARTITION_DAYS[width]
    if spanned > MAX_EVENT_PARTITIONS:
        wider = [f'"{w}"' for w in PartitionWidth if _PARTITION_DAYS[w] > _PARTITION_DAYS[width]]
        todo = "a shorter events window"
        if wider:
            todo = f"{' or '.join(wider)}, or {todo}"
        r.error(
            ("event_partitions",),
            f'"{width}" with events = "{cfg.events.days}d" keeps about {spanned} partitions '
            f"of events, more than {MAX_EVENT_PARTITIONS} (every query on events that names no "
            f"time reads them all); use {todo}",
        )
    r.finish()
    return cfg


def _read_one(root: _Reader, table: Table, key: Key[T]) -> T:
    """The one key of a one-key table ([campaign], [log])."""
    r = root.sub(table)
    value = r.get(key)
    r.finish()
    return value


def _read(data: dict[str, Any], path: Path, text: str) -> Config:
    errors: list[ConfigError] = []
    root = _Reader(data, (), Root, errors, _Lines(text))
    base = path.parent
    smtp = _read_smtp(root.sub(Root.smtp), base)
    store = _read_store(root.sub(Root.store), base)
    header = _read_one(root, Root.campaign, Campaign.header)
    pools = _read_pools(root)
    routes = _read_routes(root, pools)
    retry = _read_retry(root.sub(Root.retry))
    classify = _read_classify(root.sub(Root.classify))
    suppress_on, confirm_after, dry_run, nxdomain_confirm_after = _read_policy(
        root.sub(Root.policy)
    )
    incidents = _read_incidents(root.sub(Root.incidents))
    guardrails = _read_guardrails(root.sub(Root.guardrails))
    webhooks = _read_webhooks(root)
    delivery = _read_delivery(root.sub(Root.delivery))
    recipients = _read_recipients(root.sub(Root.recipients), delivery)
    shaping = _read_shaping(root.sub(Root.shaping))
    admin = _read_admin(root.sub(Root.admin))
    dsn = _read_dsn(root.sub(Root.dsn))
    retention = _read_retention(root.sub(Root.retention))
    level = _read_one(root, Root.log, Log.level)
    root.finish()
    if errors:
        raise ConfigErrors(str(path), errors)
    rules = Rules(
        routes=routes,
        pools=pools,
        retry=retry,
        classify_rules=classify,
        suppress_on=suppress_on,
        confirm_after=confirm_after,
        dry_run=dry_run,
        nxdomain_confirm_after=nxdomain_confirm_after,
        incidents=incidents,
        recipients=recipients,
        guardrails=guardrails,
        shaping=shaping,
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
        retention=retention,
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
