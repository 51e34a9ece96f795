"""Hostile bounce messages: every shape that made ``parse_bounce`` quadratic (or worse), at
2 MB, is parsed in a fresh interpreter within a generous budget, and still reads the report
it carries.

The parse runs in a child process so that a regression fails the test instead of hanging
the run (the shapes took from tens of seconds to hours before). The budget is a guard
against hangs, not a measurement: ``bench/dsn_parse_bench.py`` measures, and shows the
2 MB / 200 KB ratio (about 10 when linear).
"""

from __future__ import annotations

import pickle

import pytest

from policies.dsn import MAX_RECIPIENTS, parse_bounce
from tests.support.budget import run_within
from tests.support.hostile_bounces import SHAPES

SIZE = 2_000_000
BUDGET = 10.0  # seconds, interpreter start included; a linear parse of 2 MB takes about 1

_PARSE = """
import pickle, sys
from policies.dsn import parse_bounce
parsed = parse_bounce(sys.stdin.buffer.read())
summary = None if parsed is None else (
    parsed.format, [(r.recipient, r.code, r.status) for r in parsed.recipients]
)
sys.stdout.buffer.write(pickle.dumps(summary))
"""

# What each shape still reads: (format, recipient count, first recipient, code, status).
BOB = ("text", 1, "bob@example.org", 550, "5.1.1")
EXPECTED: dict[str, tuple[str, int, str | None, int | None, str | None] | None] = {
    "html_unclosed_script": BOB,
    "html_unclosed_tags": BOB,
    "guessed_boundary": BOB,
    "folded_encoded_subject": BOB,
    "dsn_groups": ("rfc3464", MAX_RECIPIENTS, "u00000@example.org", None, "5.0.0"),
    "returned_headers": ("rfc3464", 1, "bob@example.org", 550, "5.1.1"),
    "whitespace_lines": BOB,
    "unclosed_parameter_quotes": BOB,
    "warning_subject": None,  # "warning" without a mail word: not a bounce subject
    "reply_continuation_blanks": ("text", 1, None, 550, "5.1.1"),
    "quoted_fields_after_blank_lines": None,
    "punycode_charset": BOB,
}


# What _PARSE prints: the format and (recipient, code, status) per recipient, or None.
Summary = tuple[str, list[tuple[str | None, int | None, str | None]]] | None


def _parse_in_child(raw: bytes, budget: float) -> Summary:
    summary: Summary = pickle.loads(run_within(_PARSE, raw, budget, "parse_bounce"))
    return summary


@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_a_hostile_bounce_of_2_mb_is_parsed_within_budget(shape):
    summary = _parse_in_child(SHAPES[shape](SIZE), BUDGET)
    want = EXPECTED[shape]
    if want is None:
        assert summary is None
        return
    assert summary is not None
    form, recipients = summary
    assert (form, len(recipients), *recipients[0]) == want


# Patterns tried on each line of a report: a long line (here longer than a report's line
# may be, to make the difference plain) costs its length, not its length squared.
_PATTERNS = {
    "sent_by_lead": ("_SENDER_LEAD.search", "'from' + ' ' * 100_000 + 'x'"),
    "recipient_phrase_asides": ("_PHRASE_FORMS[2].findall", "'user(' * 100_000"),
    "returned_marker_rule": ("_RETURNED_MARKER.match", "'-' * 100_000"),
    "address_then_blanks": ("_LINE_FORMS[6].match", "'a@example.org' + ' ' * 100_000 + 'x'"),
}


@pytest.mark.parametrize("pattern", sorted(_PATTERNS))
def test_line_patterns_take_linear_time_on_long_runs(pattern):
    call, text = _PATTERNS[pattern]
    code = f"import policies.dsn.prose as d\nd.{call}({text})\n"
    run_within(code, b"", BUDGET, f"{call}({text})")


def test_an_amazon_ses_notification_lists_at_most_max_recipients():
    """A notification listing 100,000 recipients is a list dump: its first MAX_RECIPIENTS
    are read, as in every other format."""
    parsed = parse_bounce(SHAPES["amazon_ses_recipients"](SIZE))
    assert parsed is not None
    assert len(parsed.recipients) == MAX_RECIPIENTS
    assert parsed.recipients[0].recipient == "user@example.org"
    assert parsed.recipients[0].status == "5.1.1"
