"""Suppression import files: good lines kept, bad ones named by line number."""

from __future__ import annotations

from policies.suppression_file import read_suppression_csv


def test_reads_addresses_reasons_header_comments_and_quotes():
    """Header, comments and blank lines are skipped; reasons optional; CSV quoting works."""
    text = [
        "address,reason\n",
        "# exported from the old ESP\n",
        "Bob@Example.COM,complaint\n",
        "\n",
        "alice@example.org\n",
        '"carol@example.net","bounced, twice"\n',
    ]
    result = read_suppression_csv(text, "imported")
    assert result.entries == [
        ("bob@example.com", "complaint"),
        ("alice@example.org", "imported"),
        ("carol@example.net", "bounced, twice"),
    ]
    assert result.errors == []


def test_bad_lines_are_reported_with_numbers_and_the_rest_kept():
    """A malformed address or too many fields is an error for that line only."""
    text = ["ok@example.org\n", "not-an-address\n", "a@b.example,x,y\n", "ok2@example.org\n"]
    result = read_suppression_csv(text, "imported")
    assert [e[0] for e in result.errors] == [2, 3]
    assert "no @domain" in result.errors[0][1]
    assert [a for a, _ in result.entries] == ["ok@example.org", "ok2@example.org"]


def test_duplicates_in_one_file_count_once():
    """The same address twice (any case) is one entry."""
    result = read_suppression_csv(["a@x.example\n", "A@X.example\n"], "imported")
    assert result.entries == [("a@x.example", "imported")]
    assert result.duplicates == 1


def test_a_line_the_csv_module_refuses_is_reported_and_the_rest_kept():
    """Found by fuzzing: a stray line break inside an unquoted field raised csv.Error and
    lost the whole file; now that line is an error and the others are read."""
    parsed = read_suppression_csv(
        ["a@example.org\n", "b@exa\nmple.org,x\n", "c@example.org\n"], "r"
    )
    assert [a for a, _ in parsed.entries] == ["a@example.org", "c@example.org"]
    [(number, why)] = parsed.errors
    assert number == 2 and why.startswith("not a CSV line")
