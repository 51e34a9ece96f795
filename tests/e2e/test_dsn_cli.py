"""`bounce-relay dsn parse` and the [dsn] section as an operator meets them."""

from __future__ import annotations

import json

from tests.support.cli import REPO, run_cli

CORPUS = REPO / "tests" / "policies" / "data" / "dsn"


def _config(tmp_path, dsn: str = "") -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'[smtp]\nlisten = "127.0.0.1:2525"\n{dsn}')
    return str(path)


def test_dsn_parse_prints_one_json_line_per_recipient(tmp_path):
    ordinary = tmp_path / "ordinary.eml"
    ordinary.write_bytes(b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
    files = sorted(str(p) for p in CORPUS.glob("rfc3464-*.eml"))[:3]
    result = run_cli("dsn", "parse", "--config", _config(tmp_path), *files, str(ordinary))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines, "the corpus reports yield results"
    assert {line["file"] for line in lines} <= set(files)
    for line in lines:
        assert set(line) >= {
            "file",
            "recipient",
            "action",
            "status",
            "code",
            "diagnostic",
            "remote_mta",
            "kind",
            "category",
            "suppress",
            "feedback_type",
        }
    assert str(ordinary) not in result.stdout


def test_dsn_parse_feedback_report_is_a_complaint(tmp_path):
    files = sorted(str(p) for p in CORPUS.glob("arf-*.eml"))[:1]
    result = run_cli("dsn", "parse", "--config", _config(tmp_path), *files)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(x) for x in result.stdout.splitlines()]
    assert (line["action"], line["kind"], line["suppress"]) == ("complaint", "complaint", True)
    assert line["feedback_type"]


def test_dsn_parse_refuses_what_is_not_a_message(tmp_path):
    garbage = tmp_path / "garbage.eml"
    garbage.write_bytes(b"\x00\x01\x02\x03 binary")
    good = sorted(str(p) for p in CORPUS.glob("rfc3464-*.eml"))[0]
    result = run_cli(
        "dsn",
        "parse",
        "--config",
        _config(tmp_path),
        str(garbage),
        str(tmp_path / "nope.eml"),
        good,
    )
    assert result.returncode == 2
    assert f"{garbage}: " in result.stderr
    assert "nope.eml: cannot read" in result.stderr
    assert good in result.stdout  # the good file still printed


def test_dsn_domain_needs_a_secret(tmp_path):
    result = run_cli(
        "check-config", "--config", _config(tmp_path, '[dsn]\ndomain = "bounce.example.net"\n')
    )
    assert result.returncode == 2
    assert "dsn.secret" in result.stderr and "at least 16 bytes" in result.stderr
    bad = run_cli(
        "check-config",
        "--config",
        _config(
            tmp_path,
            '[dsn]\ndomain = "bounce.example.net"\nsecret = "0123456789abcdefg"\nprefix = "a b"\n',
        ),
    )
    assert bad.returncode == 2
    assert "dsn.prefix (line 6)" in bad.stderr
