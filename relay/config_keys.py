"""Every key of config.toml, declared once: TOML name, kind of value, default, meaning.

Each ``Section`` subclass is one table of config.toml; its ``Key`` attributes are its
keys (the attribute name is the TOML name) and its ``Table`` attributes its sub-tables.
From these declarations:

- ``relay.config`` reads the file (name, converter and default come from here), reports
  unknown keys, and gives the frozen dataclasses their defaults;
- ``relay.config_docs`` writes the configuration reference of docs/configuration.md
  (``python -m relay.config_docs``; a test fails when the file is out of date).

A default is written as it would be in config.toml ("5m", ["127.0.0.0/8"]) and read
through the key's own converter, so the documented default and the one in force are
the same value. Defaults that are not a TOML value (the machine's name, "none") are a
``Default`` with the text the docs show.
"""

from __future__ import annotations

import inspect
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from policies.classify import Category, Kind, SuppressOn
from policies.incidents import IncidentScope
from policies.retry import Backoff, SourceChoice
from policies.verp import MIN_SECRET_LENGTH
from relay.config_values import (
    BOOL,
    CIDRS,
    CONFIG_FILE,
    DOMAIN,
    DOMAIN_PATTERNS,
    DOMAINS,
    DURATION,
    HOST_PORT,
    IPS,
    NON_NEGATIVE_INT,
    NUMBER,
    PATH,
    PORT,
    POSITIVE_DURATION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    PROCESSES,
    SHARE,
    SHARE_OR_ZERO,
    SIZE,
    STRING,
    Value,
    list_of,
    one_of,
    parse_hostport,
)

__all__ = [
    "MAX_EVENT_PARTITIONS",
    "MAX_OUTCOME_WINDOW",
    "SMTP_PORT",
    "WEBHOOK_EVENTS",
    "Admin",
    "AdminTokens",
    "Campaign",
    "Classify",
    "ClassifyRules",
    "Default",
    "Delivery",
    "Dsn",
    "Incidents",
    "Key",
    "Log",
    "LogLevel",
    "Match",
    "PartitionWidth",
    "Policy",
    "Pools",
    "RecipientAction",
    "Recipients",
    "Retention",
    "Retry",
    "RetryRules",
    "RetryTiming",
    "Root",
    "RouteMode",
    "Routes",
    "Section",
    "Smtp",
    "SmtpUsers",
    "Store",
    "Table",
    "TlsPolicy",
    "WebhookEvent",
    "Webhooks",
    "computed",
    "given_by_reader",
    "required",
    "unset",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# TOML values a default may be written as.
Toml = str | int | float | bool | list[Any]


class RouteMode(StrEnum):
    """``[[routes]] mode``: how a route finds the hosts it delivers to."""

    MX = "mx"
    SMARTHOST = "smarthost"
    STATIC = "static"


class TlsPolicy(StrEnum):
    """``[[routes]] tls``: STARTTLS towards upstreams."""

    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"
    OFF = "off"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class WebhookEvent(StrEnum):
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    NON_DELIVERY = "non_delivery"
    SUPPRESSED = "suppressed"
    UNSUPPRESSED = "unsuppressed"
    INCIDENT = "incident"
    GUARDRAIL_TRIPPED = "guardrail.tripped"
    GUARDRAIL_RELEASED = "guardrail.released"


WEBHOOK_EVENTS = tuple(event.value for event in WebhookEvent)
SMTP_PORT = 25
# A relay killed inside the window sends what it holds again: keep that short.
MAX_OUTCOME_WINDOW = timedelta(seconds=1)
_WEBHOOK_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?")
_VERP_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}")


@dataclass(frozen=True)
class Default(Generic[T_co]):
    """A default that is not written as a TOML value; ``shown`` is what the docs print.

    ``make`` gives the value, anew each time (None: the reader supplies it, e.g. "the
    first pool"); ``required`` is the error when the key is missing or empty.
    """

    shown: str
    make: Callable[[], T_co] | None = None
    required: str = ""


def unset(value: T, shown: str = "none") -> Default[T]:
    """Not set unless written; ``value`` stands for "not set" (None, 0)."""
    return Default(shown, lambda: value)


def computed(make: Callable[[], T], shown: str) -> Default[T]:
    """Worked out for each config read, e.g. the machine's name."""
    return Default(shown, make)


def given_by_reader(shown: str) -> Default[Any]:
    """Depends on other keys; relay.config passes it (``shown`` says what it is)."""
    return Default(shown)


def required(why: str, placeholder: T) -> Default[T]:
    """Must be written and not empty; ``why`` is the error, ``placeholder`` read on."""
    return Default("required", lambda: placeholder, required=why)


NONE: Default[None] = unset(None)


class Key(Generic[T]):
    """One config key. Its TOML name is the attribute name it is declared under."""

    name: str

    def __init__(self, value: Value[T], default: Toml | Default[T], doc: str) -> None:
        self.value = value
        self.doc = doc
        # The default as written in config.toml, or None when it is not a TOML value.
        self.toml: Toml | None = None
        if isinstance(default, Default):
            self.fallback: Default[T] = default
        else:
            self.toml = default
            converted = value.convert(default)
            self.fallback = Default("", lambda: converted)

    def __set_name__(self, owner: type, name: str) -> None:
        if getattr(self, "name", name) != name:
            raise TypeError(f"key {self.name!r} declared again as {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"

    @property
    def default(self) -> T:
        """The value in force when the key is not written."""
        if self.fallback.make is None:
            raise TypeError(f"{self.name}: its default depends on other keys; pass it")
        return self.fallback.make()


class Table:
    """A sub-table of a section (``[smtp.users]``, ``match = {...}``); ``array``: ``[[...]]``."""

    name: str

    def __init__(self, section: type[Section], *, array: bool = False) -> None:
        self.section = section
        self.array = array

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Table({self.name!r})"


class Section:
    """One table of config.toml. Subclasses declare keys; the docstring is its docs prose.

    A section that subclasses another has the other's keys too (``[[retry.rules]]``
    takes the timing keys of ``[retry]``). ``when_absent``: the entries of an array of
    tables read when the file has none, as if written.
    """

    keys: ClassVar[dict[str, Key[Any]]] = {}
    tables: ClassVar[dict[str, Table]] = {}
    when_absent: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.keys = {}
        cls.tables = {}
        for klass in reversed(cls.__mro__):
            for name, entry in vars(klass).items():
                if isinstance(entry, Key):
                    cls.keys[name] = entry
                elif isinstance(entry, Table):
                    cls.tables[name] = entry

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def names(cls) -> list[str]:
        return [*cls.keys, *cls.tables]


# -- the sections, in the order of the docs -----------------------------------------------


_SMTP_USER_NEEDS = "each [[smtp.users]] needs name and password_hash"


class SmtpUsers(Section):
    """Logins for SMTP AUTH (PLAIN and LOGIN, offered only after STARTTLS)."""

    name = Key(STRING, required(_SMTP_USER_NEEDS, ""), "the login name")
    password_hash = Key(
        STRING, required(_SMTP_USER_NEEDS, ""), "scrypt hash from `bounce-relay hash-password`"
    )


class Smtp(Section):
    """The listener clients send through, and what each client may cost.

    Limits count per relay process and per session.
    """

    listen = Key(HOST_PORT, "127.0.0.1:2525", "where clients connect (`[::1]:2525` for IPv6)")
    hostname = Key(
        STRING,
        computed(socket.getfqdn, "the machine's FQDN"),
        "our name in the greeting and in EHLO to upstreams",
    )
    allowed_clients = Key(
        CIDRS,
        ["127.0.0.0/8", "::1/128"],
        "CIDRs that may relay without AUTH; everyone else gets `550 5.7.1`",
    )
    max_message_size = Key(SIZE, "35MB", "advertised as SIZE; larger messages get `552 5.3.4`")
    max_recipients = Key(POSITIVE_INT, 1000, "per message; more get `452 4.5.3`")
    tls_cert = Key(
        CONFIG_FILE,
        NONE,
        "PEM certificate (relative to the config file); with `tls_key`, enables STARTTLS",
    )
    tls_key = Key(CONFIG_FILE, NONE, "PEM private key of `tls_cert`; the two are set together")
    require_tls = Key(
        BOOL, False, "refuse MAIL before STARTTLS (`530`); needs `tls_cert` and `tls_key`"
    )
    auth_required = Key(
        BOOL,
        False,
        "every client must log in, even from `allowed_clients`; needs `[[smtp.users]]`",
    )
    users = Table(SmtpUsers, array=True)
    session_timeout = Key(
        POSITIVE_DURATION,
        "5m",
        "the per-command timeout: a client idle this long between commands hears "
        "`421 4.4.2` and is closed",
    )
    max_connections = Key(
        POSITIVE_INT,
        500,
        "SMTP sessions per relay process; past it a new connection hears `421 4.7.0 Too many "
        "connections, try again later` and is closed. A session in DATA holds about 4.5 times its "
        "message size in memory (measured), so keep `max_connections * max_message_size` "
        "within what the machine has",
    )
    data_timeout = Key(
        POSITIVE_DURATION,
        "10m",
        "the whole DATA phase, from `354` to the final dot; longer gets `421 4.4.2`, the "
        "connection closed, nothing stored",
    )
    min_data_rate = Key(
        SIZE,
        "1KB",
        "bytes a second: after `min_data_rate_grace`, a DATA phase averaging less is cut "
        "with `421 4.4.2`, nothing stored",
    )
    min_data_rate_grace = Key(
        DURATION, "30s", "how long a DATA phase may run before `min_data_rate` applies"
    )
    max_noops = Key(
        POSITIVE_INT,
        50,
        "NOOPs per session, counted from its last accepted message; past it, `421 4.7.0` "
        "and the connection closed",
    )
    max_rsets = Key(POSITIVE_INT, 50, "RSETs per session, counted like `max_noops`")
    max_invalid_commands = Key(
        POSITIVE_INT,
        10,
        "invalid commands per session, counted like `max_noops`: syntax, sequence and "
        "unknown-command errors (`500`-`504`, `555`); a refused address does not count. "
        "aiosmtpd itself closes after 5 unknown command names",
    )
    max_hops = Key(
        POSITIVE_INT,
        100,
        "a message that arrives with this many `Received:` fields or more is a mail loop: "
        "`554 5.4.6 Too many hops (mail loop?)` (RFC 3463: routing loop detected), nothing "
        "stored. The relay's own `Received:` field counts, so a route or MX pointing back at "
        'it ends after `max_hops` passes. RFC 5321 §6.3 asks for a threshold of "at least '
        '100" (Postfix uses 50): a false alarm bounces real mail, a loop only makes a few '
        "more passes before it is caught",
    )
    max_auth_failures = Key(
        POSITIVE_INT,
        3,
        "wrong passwords (`535`) in one session; the next AUTH hears `421 4.7.0 Too many "
        "failed authentication attempts` and the connection is closed",
    )
    auth_failures_per_client = Key(
        POSITIVE_INT,
        10,
        "wrong passwords from one client address (IPv6: its /64; all sessions of this "
        "process) within `auth_failure_window`; past it, AUTH from that address hears "
        "`421 4.7.0 ... from your address, try again later` and is closed until the oldest "
        "failure leaves the window. Kept in memory, at most 10 000 addresses (least "
        "recently seen forgotten first)",
    )
    auth_failure_window = Key(DURATION, "15m", "the window of `auth_failures_per_client`")
    proxy_protocol_from = Key(
        CIDRS,
        [],
        "CIDRs of load balancers that send a PROXY header (v1 or v2); empty: off. A "
        "connection from one must start with a valid header, and its source address is the "
        "client: `allowed_clients`, the logs and the stored client address see it, also "
        "after STARTTLS (a v1 `UNKNOWN` or v2 `LOCAL` header, a proxy's health check, leaves "
        "the proxy as the client). A PROXY line from anyone else is refused",
    )
    processes = Key(
        PROCESSES,
        "auto",
        'relay processes sharing the port, each with intake and delivery; `"auto"`: one '
        'per CPU core; see "Several processes" in docs/operations.md',
    )


class Store(Section):
    """Where the queue, the suppression list and the events live."""

    dsn = Key(STRING, "", "PostgreSQL DSN; empty runs the embedded server under `data_dir`")
    data_dir = Key(PATH, "var", "the embedded server's directory, relative to the config file")
    pool_min_size = Key(
        POSITIVE_INT,
        2,
        "connections to PostgreSQL for the queue statements of a serving relay (intake, "
        "claims, outcomes: planned once, generic plans), per process; at most "
        "`pool_max_size`",
    )
    pool_max_size = Key(
        POSITIVE_INT,
        10,
        "the most of those connections; reports, the admin page, maintenance and webhooks "
        "use up to 4 more",
    )
    commit_batch = Key(POSITIVE_INT, 256, "most messages in one group commit")


class Campaign(Section):
    """How a message names its campaign (pools may claim campaigns)."""

    header = Key(STRING, "X-Campaign-ID", "header whose value is the message's campaign")


class Pools(Section):
    """Source IPs to send from. Without any `[[pools]]`, one pool named `default` sends
    from `127.0.0.1`."""

    when_absent = ({"name": "default", "source_ips": ["127.0.0.1"]},)
    name = Key(STRING, required("every pool needs a name", ""), "the pool's name")
    source_ips = Key(
        IPS,
        required("a pool needs at least one source IP", ()),
        "source IPs, used round-robin",
    )
    from_domains = Key(
        DOMAINS.then(frozenset),
        [],
        "sending (From) domains this pool claims: their mail leaves from it whatever the "
        "route says (a campaign claim wins over a From domain)",
    )
    campaigns = Key(
        list_of(STRING, "a list of strings").then(frozenset),
        [],
        "campaigns this pool claims: their mail leaves from it, before any From domain or "
        "route pool",
    )


class Routes(Section):
    """Where mail to a recipient domain goes; the first route whose `domains` match wins.
    Without any `[[routes]]`, one route takes every domain by MX from the first pool."""

    when_absent = ({},)
    domains = Key(
        DOMAIN_PATTERNS,
        ["*"],
        "recipient domains; `*` all, `*.example.com` its subdomains",
    )
    mode = Key(
        one_of(RouteMode),
        "mx",
        "`mx` (DNS MX, A/AAAA fallback, null MX), `smarthost` or `static` (`hosts` in order)",
    )
    hosts = Key(
        list_of(
            Value("host:port", lambda raw: parse_hostport(STRING.convert(raw), SMTP_PORT)),
            "a list of host:port",
        ),
        [],
        '`["host:port", ...]` for `smarthost` and `static`, which need one at least '
        f"(the port defaults to {SMTP_PORT})",
    )
    pool = Key(STRING, given_by_reader("the first pool"), "the `[[pools]]` this route sends from")
    tls = Key(
        one_of(TlsPolicy),
        "opportunistic",
        "`opportunistic` (STARTTLS when offered, no certificate check), `required` "
        "(verified), `off`",
    )
    username = Key(STRING, "", "AUTH at the smarthost (after STARTTLS)")
    password = Key(STRING, "", "AUTH at the smarthost, with `username`")
    mx_port = Key(PORT, SMTP_PORT, "port for MX hosts (tests and demos use another)")
    address_literals = Key(
        BOOL,
        False,
        "deliver recipients at an address literal (`user@[192.0.2.1]`) to that IP, never "
        "through DNS; where the route for them does not say so, RCPT refuses them "
        "(`550 5.1.2`) and they are never suppressed",
    )


class Match(Section):
    """What a `[[retry.rules]]` or `[[classify.rules]]` entry applies to, as an inline
    table: `match = { code = [452], text = "quota" }`. Everything given must hold;
    classify rules match the reply, so they take no `category`."""

    category = Key(
        list_of(STRING, "a list of categories"),
        [],
        "the reply's category (`greylisted`, `mailbox_full`, ...; retry rules only)",
    )
    code = Key(list_of(POSITIVE_INT, "a list of reply codes"), [], "reply codes, e.g. `[452]`")
    enhanced = Key(
        list_of(STRING, "a list of enhanced codes"), [], 'enhanced status codes, e.g. `["4.2.2"]`'
    )
    domain = Key(DOMAINS, [], "recipient domains")
    text = Key(STRING, NONE, "a case-insensitive regular expression on the reply text")


class RetryTiming(Section):
    """The keys of a retry schedule, shared by `[retry]` and `[[retry.rules]]`."""

    schedule = Key(
        list_of(DURATION, "a list of durations"),
        ["5m", "15m", "1h", "4h", "12h"],
        "waits after each soft bounce; the last repeats",
    )
    interval = Key(
        DURATION,
        NONE,
        "the other timing form, instead of `schedule`: the first wait, stretched by `backoff`",
    )
    backoff = Key(
        one_of(Backoff),
        "fixed",
        "with `interval`: `fixed`, `geometric` (interval * exponent^(n-1)) or `random` "
        "(between interval and interval * (1+random_modifier))",
    )
    exponent = Key(POSITIVE_NUMBER, 2, "the factor of `geometric` backoff")
    random_modifier = Key(POSITIVE_NUMBER, 1, "the spread of `random` backoff")
    spread = Key(
        NUMBER,
        0.1,
        "each schedule, `fixed` or `geometric` delay is stretched by a random share of up to "
        "this (0.1: up to 10 % later), so a queue that failed together (an upstream down) "
        "comes back spread out; `0` for exact times",
    )
    max_age = Key(
        DURATION,
        "3d",
        "give up (expired + non_delivery event) this long after the first soft bounce",
    )
    max_attempts = Key(POSITIVE_INT, NONE, "give up after this many attempts")
    source = Key(
        one_of(SourceChoice),
        "same_ip",
        "the next attempt leaves from the `same_ip` or from another IP of the pool (`other_ip`)",
    )


class RetryRules(RetryTiming):
    """Retry schedules for particular soft bounces, in file order; the first that matches
    wins, else `[retry]`. A rule takes the timing keys of `[retry]`; what it leaves out
    comes from `[retry]`, except `source`, which is `"same_ip"` unless the rule says
    otherwise. `config.toml` ships a rule for greylisting."""

    name = Key(STRING, required("every retry rule needs a name", ""), "the rule's name")
    match = Table(Match)


class Retry(RetryTiming):
    """When to try a soft bounce again, and when to give up."""

    rules = Table(RetryRules, array=True)


class ClassifyRules(Section):
    """Operator overrides of the classification, in file order; the first that matches
    wins. A rule sets at least one of `kind`, `category`, `suppress`."""

    name = Key(STRING, required("every classify rule needs a name", ""), "the rule's name")
    match = Table(Match)
    kind = Key(one_of(Kind), NONE, "the kind a matching reply gets")
    category = Key(one_of(Category), NONE, "the category a matching reply gets")
    suppress = Key(BOOL, NONE, "whether a matching hard bounce suppresses its recipient")


class Classify(Section):
    """How replies are read."""

    rules = Table(ClassifyRules, array=True)


class Policy(Section):
    """When a hard bounce suppresses its recipient."""

    suppress_on = Key(
        one_of(SuppressOn),
        "recipient",
        "`recipient`: only recipient-caused hard bounces (user unknown, disabled mailbox, "
        "domain not found) suppress; `any_5xx`: the literal rule, every 5xx is hard and "
        "suppresses",
    )
    confirm_hard = Key(
        BOOL,
        False,
        "a suppressing hard bounce only puts the address on probation; a second one at "
        "least `confirm_after` later, or from another source IP, suppresses it (see "
        '"Never suppress a good address" in docs/delivery.md)',
    )
    confirm_after = Key(DURATION, "1h", "with `confirm_hard`: how much later the second one")
    nxdomain_confirm_after = Key(
        DURATION,
        "1h",
        "a recipient domain our resolver says does not exist (NXDOMAIN, or no mail host) "
        "suppresses only when it is still absent this much later; the first answer defers "
        "the delivery to then (`0s`: suppress at once). An answer the resolver cannot vouch "
        "for (the parent zone is absent too) never suppresses",
    )
    dry_run = Key(
        BOOL,
        False,
        "suppression checks (RCPT and claim time) log `intake.would_reject` / "
        "`delivery.would_cancel` and count `bounce_relay_dry_run_would_refuse_total`, and "
        "refuse nothing; suppressions are still recorded",
    )


class Incidents(Section):
    """Provider incidents: many recipients refused with one reply at one destination."""

    enabled = Key(BOOL, True, "detect provider incidents")
    window = Key(
        DURATION,
        "10m",
        "an incident: one reply template for at least `min_recipients` distinct recipients, "
        "and at least `min_share` of the recipients tried at that destination from that IP, "
        'within `window`; our resolver\'s incident: "no such domain" for at least '
        "`min_recipients` distinct recipient domains, `min_share` of those looked up",
    )
    min_recipients = Key(POSITIVE_INT, 20, "see `window`")
    min_share = Key(SHARE, 0.5, "see `window`")
    by = Key(
        # A resolver incident is detected by itself, whatever this says.
        one_of(IncidentScope, only=(IncidentScope.MX, IncidentScope.DOMAIN)),
        "mx",
        "the destination is the answering host (`mx`) or the recipient domain (`domain`)",
    )
    defer = Key(
        DURATION,
        "30m",
        "an open incident's replies retry after this; the retry rule's `max_age` still ends them",
    )
    source = Key(
        one_of(SourceChoice),
        "other_ip",
        "an open incident's replies retry from another IP of the pool (`other_ip`) or the "
        "same (`same_ip`)",
    )
    lift_on_open = Key(
        BOOL,
        True,
        "when an incident opens, lift the suppressions its earlier replies (in the window) made",
    )
    close_after = Key(DURATION, "1h", "an incident with no matching reply for this long closes")
    check_every = Key(DURATION, "15s", "how often detection runs")


class Guardrails(Section):
    """Guardrails: each campaign watched per From domain and mailbox provider, paused when a
    rate reaches its pause threshold (docs/guardrails.md says where each default comes
    from). Rates are shares of the send's attempts: 0.05 is 5%."""

    enabled = Key(BOOL, True, "watch campaigns (mail with no campaign is never held)")
    canary_size = Key(
        NON_NEGATIVE_INT,
        100,
        "a new send's first deliveries per provider; the rest wait until their rates are "
        "known (0 and `canary_share = 0`: no canary)",
    )
    canary_share = Key(
        SHARE_OR_ZERO,
        0.0,
        "or this share of the campaign's messages queued so far, when more than `canary_size`",
    )
    canary_wait = Key(
        POSITIVE_DURATION,
        "1h",
        "a canary whose replies have not all come back is judged on what came by then",
    )
    check_every = Key(
        POSITIVE_DURATION, "2s", "how often the active sends are judged and the holds reloaded"
    )
    recheck = Key(POSITIVE_DURATION, "1m", "a held delivery is handed back, due again after this")
    min_attempts = Key(POSITIVE_INT, 100, "attempts before a bounce rate is judged")
    min_attempts_complaints = Key(
        POSITIVE_INT, 1000, "attempts before the complaint rate is judged"
    )
    bounce_review = Key(SHARE, 0.05, "any 5xx bounce: log and show a review (Amazon SES: 5%)")
    bounce_pause = Key(SHARE, 0.10, "... pause the send (Amazon SES: 10%)")
    hard_bounce_review = Key(SHARE, 0.02, "bounces about the recipient (SES asks under 2%)")
    hard_bounce_pause = Key(SHARE, 0.05, "...")
    unknown_user_review = Key(SHARE, 0.02, "unknown users (Validity: good senders under 1%)")
    unknown_user_pause = Key(SHARE, 0.05, "... (Validity: problems from 5%)")
    complaint_review = Key(SHARE, 0.001, "feedback reports (Google: keep under 0.1%)")
    complaint_pause = Key(SHARE, 0.003, "... (Google: never reach 0.3%)")


def _webhook_url(url: str) -> str | None:
    if _WEBHOOK_URL.fullmatch(url):
        return None
    return f"must be an http:// or https:// URL, got {url!r}"


class Webhooks(Section):
    """Receivers of events, posted as signed JSON from a durable outbox (see "Webhooks"
    in docs/operations.md)."""

    url = Key(
        Value("an http:// or https:// URL", STRING.then(str.strip).convert).but(_webhook_url),
        required("required: the http:// or https:// address events are posted to", ""),
        "the http:// or https:// address events are posted to",
    )
    name = Key(STRING, given_by_reader("the `url`"), "names the receiver; names must differ")
    events = Key(
        list_of(one_of(WebhookEvent), "a list of events").then(
            lambda events: frozenset(event.value for event in events)
        ),
        Default("every event", lambda: frozenset(WEBHOOK_EVENTS)),
        "the events posted",
    )
    secret = Key(
        STRING,
        required(
            f"a secret of at least {MIN_SECRET_LENGTH} bytes is required to sign the events "
            '(e.g. secret = "env:BOUNCE_RELAY_WEBHOOK_SECRET")',
            "",
        ),
        f"at least {MIN_SECRET_LENGTH} bytes; signs the events",
    )
    timeout = Key(DURATION, "10s", "how long one post may take")
    max_age = Key(DURATION, "3d", "an event not accepted by then is given up")


def _outcome_window(window: timedelta) -> str | None:
    if window <= MAX_OUTCOME_WINDOW:
        return None
    return (
        f"outcome_window '{window.total_seconds():g}s' is too long: at most "
        f"'{MAX_OUTCOME_WINDOW.total_seconds():g}s' (a relay that stops in the window "
        "sends those messages again); '0s' turns it off"
    )


class Delivery(Section):
    """Sending to upstreams."""

    enabled = Key(BOOL, True, "`false` runs intake only")
    concurrency = Key(POSITIVE_INT, 100, "SMTP transactions in flight")
    connections_per_destination = Key(
        POSITIVE_INT, 10, "concurrent transactions per host:port (idle connections are reused)"
    )
    messages_per_connection = Key(
        POSITIVE_INT, 100, "then the connection is closed and a new one opened"
    )
    pipelining = Key(
        BOOL,
        True,
        "to a server that offers PIPELINING (RFC 2920), send MAIL, the RCPTs and DATA "
        "together and read their replies in order: two round trips a message instead of four; "
        "`false`: one command, one reply",
    )
    connect_timeout = Key(
        DURATION,
        "30s",
        "connecting to an upstream; no connection in time: soft `421 4.4.2`",
    )
    command_timeout = Key(
        DURATION,
        "5m",
        "each upstream command, DATA included; no reply in time: soft `421 4.4.2`, "
        "connection closed",
    )
    data_timeout = Key(
        DURATION,
        "10m",
        "the upstream's reply to the end of the message data; none in time: soft "
        "`421 4.4.2`, connection closed",
    )
    lease = Key(
        DURATION,
        "15m",
        "how long a claimed delivery belongs to this relay; a dead relay's work is "
        "claimable again after it",
    )
    batch = Key(POSITIVE_INT, 100, "claim size")
    poll_interval = Key(
        DURATION,
        "1s",
        "how often deferred work is looked for (new mail is handed over straight after commit)",
    )
    outcome_window = Key(
        DURATION.but(_outcome_window),
        "20ms",
        "how long a finished delivery's outcome waits for others to share its database "
        f'commit (at most `"{MAX_OUTCOME_WINDOW.total_seconds():g}s"`; `"0s"`: none). '
        "Nobody waits on these writes, and one commit for a window's deliveries costs the "
        "database far less than one each beside the intake's commits; a relay killed "
        "inside the window sends those messages again (at-least-once)",
    )
    nameservers = Key(
        IPS, [], "DNS servers for MX and address lookups; empty: the system resolver's"
    )
    dns_port = Key(PORT, unset(0, "the resolver's (53)"), "the port of `nameservers`")
    shutdown_grace = Key(
        DURATION,
        "30s",
        "on SIGTERM, how long deliveries in flight may take before they are cut and handed back",
    )


class ShapingGroups(Section):
    """Ceilings of one destination group, above which nothing is learned: a provider's name
    (`gmail`, `microsoft`, `yahoo`, as `bounce-relay shaping show` and the reports name
    them) or an MX or smarthost host name."""

    name = Key(
        STRING.then(str.strip).then(str.lower),
        required("every [[shaping.groups]] needs a name: a provider or a host", ""),
        "the provider or host",
    )
    connections = Key(
        POSITIVE_INT, unset(0, "`[shaping]`'s"), "open connections per source IP, all relays"
    )
    messages_per_minute = Key(
        POSITIVE_INT, unset(0, "`[shaping]`'s"), "messages a minute per source IP, all relays"
    )


class Shaping(Section):
    """Limits per destination group (a mailbox provider's MX hosts, or one host) and source
    IP that every relay on the database respects together, lowered when the upstream
    refuses a connection or a message for too much traffic and raised again while it
    accepts (see docs/shaping.md)."""

    enabled = Key(BOOL, True, "share and learn the limits (`false`: each relay on its own)")
    connections = Key(
        POSITIVE_INT,
        20,
        "open connections per destination group and source IP, all relays together; "
        "`[delivery] connections_per_destination` still caps each relay per host",
    )
    messages_per_minute = Key(
        NON_NEGATIVE_INT,
        unset(0, "none until an upstream asks for less"),
        "messages a minute per destination group and source IP, all relays together",
    )
    min_messages_per_minute = Key(
        POSITIVE_INT, 6, "a learned rate never goes below this (one every ten seconds)"
    )
    sync_every = Key(
        POSITIVE_DURATION, "1s", "how often each relay settles its shares with the others"
    )
    calm = Key(
        POSITIVE_DURATION,
        "10s",
        "after a limit is lowered, replies to what was sent before are not news for this long",
    )
    grow_every = Key(POSITIVE_DURATION, "30s", "a learned limit in use grows one step this often")
    groups = Table(ShapingGroups, array=True)


class RecipientAction(StrEnum):
    """``[recipients]`` typo and no_mail_domain: what RCPT does with such a recipient."""

    REFUSE = "refuse"
    TAG = "tag"
    OFF = "off"


class Recipients(Section):
    """Recipient domains checked at RCPT, before anything is queued: likely typos of a large
    mailbox provider's domain (gmial.com, hotmail.con), and, for recipients whose route is
    `mx`, domains that can receive no mail (no such domain, no MX and no address, a null
    MX). `refuse` answers RCPT with a 5xx naming why (and the likely address for a typo);
    `tag` accepts the recipient and records why on its delivery (`recipient_domain_flag`),
    logged as `intake.recipient_domain_flagged`; `off` does neither. The domain lookups use
    `[delivery]`'s resolver (`nameservers`, `dns_port`); an answer that cannot be trusted
    (timeout, SERVFAIL, a resolver that says the parent zone is absent too) accepts the
    recipient: a DNS fault never refuses mail. See docs/recipient-checks.md."""

    typo = Key(
        one_of(RecipientAction),
        "refuse",
        "a likely typo of a large provider's domain: `refuse` (`550 5.1.2` with the likely "
        "address), `tag` or `off`. Refused by default: the mail would otherwise go to whoever "
        "holds the typo domain (many are registered to catch such mail) or bounce later",
    )
    no_mail_domain = Key(
        one_of(RecipientAction),
        "off",
        "a domain with no mail server by DNS (mx routes only): `refuse` (`550 5.1.2`; a null "
        "MX `556 5.1.10`), `tag` or `off`. Off by default: it puts a DNS lookup in RCPT for "
        "every domain not cached, and delivery bounces these recipients anyway",
    )
    lookup_timeout = Key(
        POSITIVE_DURATION,
        "2s",
        "the longest RCPT waits for a domain's lookups; then the recipient is accepted",
    )
    cache_size = Key(POSITIVE_INT, 10000, "domains whose answer is kept (least recently used go)")
    cache_ttl = Key(
        POSITIVE_DURATION,
        "10m",
        "how long an answer is kept, found or not; an answer that could not be had is "
        "kept 30 seconds at most",
    )


class AdminTokens(Section):
    """Bearer tokens of the JSON API, each named for the audit log."""

    name = Key(STRING, "", "the token's name in the audit log")
    hash = Key(STRING, "", "the token's scrypt hash from `bounce-relay hash-password`")


class Admin(Section):
    """The admin listener: `/metrics`, `/healthz`, `/readyz`, the admin page and the JSON
    API."""

    listen = Key(
        HOST_PORT,
        "127.0.0.1:8025",
        "where it listens (two relays on one machine need two ports; `:0` picks one)",
    )
    password_hash = Key(
        STRING,
        "",
        "the admin page's old shared password (scrypt hash from `bounce-relay hash-password`): "
        "it logs in as a built-in `admin` only while no account exists (`bounce-relay admin "
        "user add`); empty: accounts only",
    )
    tokens = Table(AdminTokens, array=True)
    trusted_proxies = Key(
        CIDRS,
        [],
        "CIDRs of reverse proxies whose `X-Forwarded-For` names the client; the admin login "
        "limit keys on that client. From anyone else the header is ignored",
    )


def _verp_prefix(prefix: str) -> str | None:
    if _VERP_PREFIX.fullmatch(prefix):
        return None
    return "must be 1-31 letters, digits, '.', '_' or '-' (it is the return path's local part)"


class Dsn(Section):
    """Bounces that come back by mail: VERP return paths and bounce intake; off while
    `domain` is empty."""

    domain = Key(
        Value(
            "a domain, or empty",
            lambda raw: DOMAIN.convert(raw) if STRING.convert(raw).strip() else "",
        ),
        "",
        "the bounce domain: each delivery goes out with its own signed return path "
        "`<prefix>+<token>@<domain>` and mail to this domain is read as bounces, never "
        "relayed (point its MX at the relay); empty: off",
    )
    prefix = Key(
        Value("a return path local part", STRING.convert).but(_verp_prefix),
        "bounces",
        "the return path's local part before `+`",
    )
    secret = Key(
        STRING,
        "",
        f"required with `domain`: at least {MIN_SECRET_LENGTH} bytes, signs the return paths "
        '(HMAC-SHA256); write `"env:BOUNCE_RELAY_DSN_SECRET"`; changing it orphans the '
        "bounces of mail already sent",
    )
    max_unmatched_per_client = Key(
        POSITIVE_INT,
        100,
        "bounces that match no delivery kept per client address per hour; the rest are "
        "refused with `450 4.7.1`",
    )
    unmatched_retention = Key(
        DURATION,
        "7d",
        "how long unmatched bounces are kept for inspection before they are deleted",
    )


class Log(Section):
    """The relay's log (structlog: JSON when stderr is not a terminal)."""

    level = Key(one_of(LogLevel), "info", "the least severe level written")


class PartitionWidth(StrEnum):
    """``[retention] event_partitions``: the span of time one partition of events holds."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


# A query on events that names no time (an address's history, a delivery's events) reads
# every partition: measured with 13 monthly, 53 weekly and 370 daily partitions, 0.25, 0.6
# and 86 ms for one address's bounces. The [retention] events window may span at most this
# many partitions.
MAX_EVENT_PARTITIONS = 120


class Retention(Section):
    """How long data is kept. Every relay looks every `check_every`, one at a time does the
    work (see "Data lifecycle" in docs/operations.md): events are partitioned by time, with
    partitions created ahead, and a partition whose every event is older than `events` is
    dropped whole; the rest is deleted in small batches. Unmatched bounces are kept for
    `[dsn] unmatched_retention`. The bounces report reads its rollups, which are kept for
    ever: its numbers do not change when events go."""

    events = Key(
        POSITIVE_DURATION,
        "400d",
        "events (accepted, attempts, bounces, suppressions) are kept this long, then dropped "
        "a partition at a time: the events behind a report row and an address's bounce "
        "history reach back this far. 400 days: a year of reports, from the first of a month",
    )
    event_partitions = Key(
        one_of(PartitionWidth),
        "week",
        "the time one partition of events holds: events are kept up to this much longer than "
        "`events`, and a query not limited in time reads every partition, so `events` may "
        f"span at most {MAX_EVENT_PARTITIONS} of them (`day` suits a window of weeks, "
        "`month` one of years)",
    )
    messages = Key(
        POSITIVE_DURATION,
        "30d",
        "a message whose deliveries are all final (delivered, bounced, expired, cancelled) "
        "is deleted with its deliveries this long after it was received: the queue page, "
        "`queue show` and an address's deliveries reach back this far",
    )
    webhook_outbox = Key(
        POSITIVE_DURATION,
        "7d",
        "webhook outbox rows delivered or given up are deleted this long after they were written",
    )
    admin_audit = Key(
        POSITIVE_DURATION,
        unset(None, "kept"),
        "admin audit rows older than this are deleted; unset, the audit log is kept",
    )
    check_every = Key(
        POSITIVE_DURATION,
        "1h",
        "how often each relay looks for partitions to create and data to remove",
    )


class Root(Section):
    """config.toml itself: its tables, in the order of the docs."""

    smtp = Table(Smtp)
    store = Table(Store)
    campaign = Table(Campaign)
    pools = Table(Pools, array=True)
    routes = Table(Routes, array=True)
    retry = Table(Retry)
    classify = Table(Classify)
    policy = Table(Policy)
    incidents = Table(Incidents)
    guardrails = Table(Guardrails)
    webhooks = Table(Webhooks, array=True)
    delivery = Table(Delivery)
    recipients = Table(Recipients)
    shaping = Table(Shaping)
    admin = Table(Admin)
    dsn = Table(Dsn)
    retention = Table(Retention)
    log = Table(Log)
