"""The argparse side of the command line: the parser, its help, the shared options and the
argument types that check a value before anything else happens.

A value that cannot be right (a malformed address, a negative limit) is refused here, at
parse time, as a usage error (exit 2): before a config file is read or a database reached.
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from policies.addresses import AddressError, ascii_domain, normalise_address, validate_address
from policies.text import printable

__all__ = [
    "PROG",
    "Parser",
    "actor_option",
    "add_command",
    "address",
    "address_or_domain",
    "config_option",
    "current_user",
    "iso_datetime",
    "positive_int",
    "recipient_domain",
    "row_id",
    "sending_domain",
]

PROG = "bounce-relay"
# PostgreSQL's bigint: a larger id can name no row, and the driver would refuse it.
_MAX_ID = 2**63 - 1


class HelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" after an option's help where X is a real default: not for a
    flag, nor where there is none (None, ""), nor where the help already says it (a
    default that depends on something, like report's --format, is written in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or default is None
            or isinstance(default, bool)
            or default in ("", [], argparse.SUPPRESS)
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit 2:
    ``bounce-relay: queue purge: the following arguments are required: --reason; see
    `bounce-relay queue purge --help```. A message that already says what to do (it holds
    "; ") is not followed by the pointer to --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        todo = "" if "; " in message else f"; see `{self.prog} --help`"
        self.exit(2, f"{PROG}: {where}{printable(message)}{todo}\n")


def add_command(
    subparsers: argparse._SubParsersAction[Parser], name: str, help_text: str
) -> Parser:
    """A command (or an action of one) under ``subparsers``; its own --help opens with
    ``help_text`` too."""
    return subparsers.add_parser(name, help=help_text, description=help_text)


def config_option(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` for a command that reads the config file. SUPPRESS: a value given
    before the command (``bounce-relay --config X queue list``, still accepted) is kept."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the config file (default: $BOUNCE_RELAY_CONFIG, else ./config.toml)",
    )
    parser.set_defaults(reads_config=True)


def current_user() -> str:
    """Who runs the command, for the audit log: the login name, or the uid where the
    process has none (a container's arbitrary uid has no passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        metavar="NAME",
        default=current_user(),
        help="who does it, as the audit log records it",
    )


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a check that raises ``ValueError`` (``AddressError`` is one):
    its message becomes the usage error."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{value} is not positive; give 1 or more")
    return value


def _row_id(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_ID:
        raise ValueError(f"{value} is larger than any id")
    return value


def _address(text: str) -> str:
    """The address as given (commands normalise it), once it is known to be one."""
    validate_address(text)
    return text


def _sending_domain(text: str) -> str:
    """A sending (MAIL FROM) domain in its ASCII form."""
    domain = _address_or_domain(text)
    if "@" in domain:
        raise ValueError(f"{text!r} is an address; give a sending domain (what follows the @)")
    return domain


def _recipient_domain(text: str) -> str:
    return ascii_domain(text) if text else ""


def _address_or_domain(text: str) -> str:
    """An address key, or a bare domain (every address in it)."""
    text = text.strip()
    try:
        if "@" in text:
            validate_address(text)
            return normalise_address(text)
        validate_address(f"postmaster@{text}")  # a domain an address may have
        return ascii_domain(text)
    except AddressError as exc:
        raise ValueError(f"{text!r} is neither an address nor a domain ({exc.why})") from None


def _iso_datetime(text: str) -> datetime:
    """An ISO date or date-time; UTC when it has no offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO date or date-time (2026-11-01, 2026-11-01T08:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


positive_int = _checked(_positive_int)
row_id = _checked(_row_id)
address = _checked(_address)
sending_domain = _checked(_sending_domain)
recipient_domain = _checked(_recipient_domain)
address_or_domain = _checked(_address_or_domain)
iso_datetime = _checked(_iso_datetime)
