"""structlog configuration: JSON lines off a terminal, readable console on one.

``merge_contextvars`` comes first so that what the intake binds per session
(session_id, peer) and per message (queue_id) reaches every line.

Per-message lines are on the hot path (a line per message and stage at ``info``), so a
line costs little (issue 23; ``bench/logging_cost.sh`` and ``bench/logging_cost.py``
measure it): the processors are few and plain, the timestamp's date and time are worked
out once a second, orjson renders the line as bytes, and at debug and info a
``LineWriter`` thread writes the lines to stderr in batches, whole (the processes of one
relay share stderr), off the event loop. When stderr falls behind, routine lines are
dropped and counted (``dropped_log_lines``, the metric
``bounce_relay_log_lines_dropped_total``) rather than stalling intake; warnings and
errors are kept. Lines still queued at exit are written (``atexit``, for up to 5 s: a
stalled stderr must not keep the process from ending). At warning and above, lines are
few and written at once by the caller, in order with what a command prints itself.
"""

from __future__ import annotations

import atexit
import contextvars
import json as stdlib_json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX

from relay.ops.log_writer import LineWriter

if TYPE_CHECKING:
    from prometheus_client import Metric

__all__ = ["DroppedLogLines", "configure_logging", "dropped_log_lines", "flush_logs"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The level a structlog method logs at (structlog's map_method_name).
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error", "msg": "info", "fatal": "critical"}
_PREFIX_LEN = len(STRUCTLOG_KEY_PREFIX)
_ORJSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


class _State:
    """The process's logging state (module attributes would need ``global``)."""

    writer: LineWriter | None = None  # None: not configured, or on a terminal
    dropped_by_earlier_writers = 0
    # A second and its date and time of day as text, in one tuple: a thread reads a pair
    # that belongs together even while another stores the next second's.
    second: tuple[int, str] = (-1, "")


_state = _State()


def configure_logging(
    level: str = "info",
    *,
    json: bool | None = None,
    fd: int | None = None,
    background: bool | None = None,
) -> None:
    """Configure structlog once for the process.

    ``json`` defaults to "stderr is not a tty"; ``fd`` (stderr's) is where lines go.
    ``background``: lines are written by a thread, not by the caller; by default when
    ``level`` lets the per-message lines through (debug, info). At warning and above the
    lines are few and are written at once, in order with what a command prints itself.
    """
    target = _stderr_fd() if fd is None else fd
    as_json = (not os.isatty(target)) if json is None else json
    if background is None:
        background = _LEVELS[level] <= logging.INFO
    if _state.writer is not None:
        _state.writer.close()
        _state.dropped_by_earlier_writers += _state.writer.dropped
        _state.writer = None
    shared: list[structlog.types.Processor] = [_merge_contextvars, _add_level_and_time]
    if as_json:
        _state.writer = LineWriter(target, background=background, describe_drops=_drop_line)
        processors = [*shared, _render_json]
        factory: Any = _LineLoggerFactory()
    else:
        # A person at a terminal: colours, one write per line (print() makes two, and a
        # line written whole is not torn by another process's line).
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        stream = sys.stderr if fd is None else open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115
        factory = structlog.WriteLoggerFactory(file=stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiosmtpd and asyncpg log through the stdlib; keep their noise at warning.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def flush_logs(timeout: float | None = None) -> bool:
    """Wait until every line logged so far is written; False on timeout."""
    return _state.writer.flush(timeout) if _state.writer is not None else True


def dropped_log_lines() -> int:
    """Lines dropped since the process started because stderr fell behind."""
    writer = _state.writer
    return _state.dropped_by_earlier_writers + (writer.dropped if writer is not None else 0)


class DroppedLogLines:
    """A Prometheus collector: ``bounce_relay_log_lines_dropped_total``, this process's."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "bounce_relay_log_lines_dropped",
            "Info and debug log lines dropped because stderr fell behind (warnings and "
            "errors are kept)",
            value=dropped_log_lines(),
        )


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by something with no fd
        return 2


def _close_writer() -> None:
    if _state.writer is not None:
        _state.writer.close()


def _after_fork_in_child() -> None:
    if _state.writer is not None:
        _state.writer.after_fork_in_child()


atexit.register(_close_writer)
os.register_at_fork(after_in_child=_after_fork_in_child)


# -- processors -----------------------------------------------------------------------------


def _merge_contextvars(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog's ``merge_contextvars`` with one lookup per variable rather than two."""
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and var.name.startswith(STRUCTLOG_KEY_PREFIX):
            event_dict.setdefault(var.name[_PREFIX_LEN:], value)
    return event_dict


def _add_level_and_time(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """``level`` and ``timestamp`` (ISO 8601, UTC, microseconds), and an exception as
    text: structlog's ``add_log_level``, ``TimeStamper(fmt="iso", utc=True)`` and
    ``format_exc_info`` in one step, with the date and time of day formatted once a
    second rather than on every line."""
    event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
    second, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached = _state.second
    if cached[0] != second:
        cached = _state.second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event_dict["timestamp"] = f"{cached[1]}.{nanos // 1000:06d}Z"
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, method, event_dict)
    return event_dict


def _render_json(_: Any, __: str, event_dict: Mapping[str, Any]) -> bytes:
    """One JSON line, newline included. orjson renders datetimes as ISO 8601 and what
    it does not know through ``__structlog__`` or ``repr``, as structlog's renderer;
    what it refuses (a lone surrogate from undecodable input, an integer past 64 bits)
    goes through the standard library's encoder, which escapes it."""
    try:
        return orjson.dumps(event_dict, default=_fallback, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    try:
        return (stdlib_json.dumps(event_dict, default=_fallback) + "\n").encode()
    except ValueError:  # a value that contains itself: its repr, not a lost line
        flat = {str(k): v if isinstance(v, str) else repr(v) for k, v in event_dict.items()}
        return (stdlib_json.dumps(flat) + "\n").encode()


def _fallback(value: object) -> object:
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if structlog_form is not None else repr(value)


def _drop_line(count: int) -> bytes:
    """What the writer logs after it had to drop ``count`` lines."""
    event = {
        "event": "log.lines_dropped",
        "dropped": count,
        "why": "stderr fell behind (its reader is slow or stalled)",
        "action": "info and debug lines were dropped, warnings and errors kept; look at "
        "what reads the relay's stderr (journald's rate limits, a full disk)",
    }
    return _render_json(None, "warning", _add_level_and_time(None, "warning", event))


# -- the logger structlog hands each rendered line to ---------------------------------------


class _LineLogger:
    """Hands a rendered line to the writer; a warning or an error is never dropped."""

    def info(self, line: bytes) -> None:
        _write(line, keep=False)

    def warning(self, line: bytes) -> None:
        _write(line, keep=True)

    debug = msg = info
    warn = error = critical = fatal = exception = warning


def _write(line: bytes, *, keep: bool) -> None:
    # The writer of the moment, not of the logger's creation: a bound logger is cached
    # on first use and may outlive a reconfiguration.
    writer = _state.writer
    if writer is not None:
        writer.write(line, keep=keep)
    else:
        os.write(_stderr_fd(), line)


class _LineLoggerFactory:
    def __call__(self, *args: Any) -> _LineLogger:
        return _LineLogger()
