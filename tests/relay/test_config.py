"""config.toml's keys are declared once (relay/config_keys.py): the reader, the dataclass
defaults, check-config's errors and the reference in docs/configuration.md follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from policies.incidents import IncidentRules
from relay.config import (
    AdminConfig,
    DeliveryConfig,
    DsnConfig,
    PoolConfig,
    RouteConfig,
    RouteMode,
    SmtpConfig,
    StoreConfig,
    TlsPolicy,
    load_config,
)
from relay.config_docs import BEGIN, COMMAND, END, main, render, toml, update
from relay.config_keys import Pools, Root, Routes, Section
from relay.errors import ConfigErrors

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "configuration.md"


def test_the_reference_in_the_docs_is_generated_from_the_declarations():
    text = DOCS.read_text(encoding="utf-8")
    assert update(text) == text, (
        "docs/configuration.md is out of date with relay/config_keys.py: "
        f"run `{COMMAND}` from the repository root"
    )


def test_every_key_has_a_meaning_and_a_value_in_the_reference():
    reference = render()
    for section in _sections():
        for name, key in section.keys.items():
            assert key.doc and key.value.described, f"{section.__name__}.{name}"
            assert f"`{name}`" in reference


def _sections() -> list[type[Section]]:
    found: list[type[Section]] = []

    def visit(section: type[Section]) -> None:
        for table in section.tables.values():
            if table.section not in found:
                found.append(table.section)
                visit(table.section)

    visit(Root)
    return found


def _every_default_written(section: type[Section], header: str) -> str:
    """``header`` with each key of ``section`` written at its declared TOML default."""
    lines = [header]
    for name, key in section.keys.items():
        if key.toml is not None:
            lines.append(f"{name} = {toml(key.toml)}")
    return "\n".join(lines) + "\n"


def test_every_key_written_at_its_declared_default_reads_as_if_left_out(write_config):
    """Each declared key is read (none is reported unknown), each TOML default passes its
    own key's check, and what it gives is the default in force without the key."""
    tables = [
        _every_default_written(table.section, f"[{name}]")
        for name, table in Root.tables.items()
        if not table.array
    ]
    tables.append(_every_default_written(Pools, "[[pools]]") + 'name = "default"\n')
    tables[-1] += 'source_ips = ["127.0.0.1"]\n'
    tables.append(_every_default_written(Routes, "[[routes]]"))
    written = "\n".join(tables)
    left_out = load_config(write_config("", replace_base=True, name="empty.toml"))
    full = load_config(write_config(written, replace_base=True, name="full.toml"))
    assert dataclasses.replace(full, path=left_out.path) == left_out


def test_the_dataclass_defaults_are_the_declared_ones(write_config):
    config = load_config(write_config("", replace_base=True))
    assert SmtpConfig() == config.smtp
    assert dataclasses.replace(StoreConfig(), data_dir=config.store.data_dir) == config.store
    assert config.store.data_dir == config.path.parent / StoreConfig().data_dir
    assert DeliveryConfig() == config.delivery
    assert AdminConfig() == config.admin
    assert DsnConfig() == config.dsn
    assert (RouteConfig(domains=("*",)),) == config.rules.routes
    assert (PoolConfig("default", ("127.0.0.1",)),) == config.rules.pools
    # IncidentRules keeps its own defaults in policies/ (which never imports relay/):
    # they must agree with the declarations.
    assert IncidentRules() == config.rules.incidents


def test_route_mode_and_tls_policy_are_enums_that_compare_as_strings(write_config):
    config = load_config(
        write_config(
            '[[routes]]\nmode = "smarthost"\nhosts = ["127.0.0.1:2525"]\ntls = "required"\n',
            replace_base=True,
        )
    )
    route = config.rules.routes[0]
    assert route.mode == "smarthost" and route.mode is RouteMode.SMARTHOST
    assert route.tls == "required" and route.tls is TlsPolicy.REQUIRED
    built = RouteConfig(("*",), mode="static", tls="off")  # type: ignore[arg-type]
    assert built.mode is RouteMode.STATIC and built.tls is TlsPolicy.OFF
    with pytest.raises(ValueError, match="carrier"):
        RouteConfig(("*",), mode="carrier")  # type: ignore[arg-type]


def _errors(write_config, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as bad:
        load_config(write_config(text, replace_base=True))
    return [str(e) for e in bad.value.errors]


def test_errors_name_the_key_its_line_and_what_it_takes(write_config):
    errors = _errors(
        write_config,
        "[smtp]\n"  # 1
        "listen = 2525\n"  # 2
        "max_noops = 0\n"  # 3
        "max_noop = 5\n"  # 4
        'session_timeout = "0s"\n'  # 5
        "[[pools]]\n"  # 6
        'source_ips = ["127.0.0.1"]\n'  # 7
        "[[routes]]\n"  # 8
        'mode = "carrier"\n'  # 9
        "[[retry.rules]]\n"  # 10
        'name = "g"\n'  # 11
        'match = { txt = "grey" }\n'  # 12
        "[log]\n"  # 13
        "level = 3\n",  # 14
    )
    assert errors == [
        "smtp.listen (line 2): bad address 2525: use host:port",
        "smtp.session_timeout (line 5): must be longer than 0s (e.g. '5m')",
        "smtp.max_noops (line 3): must be a positive integer, got 0",
        "smtp.max_noop (line 4): unknown key (did you mean 'max_noops'? check the spelling "
        "against the keys of [smtp] in docs/configuration.md)",
        "pools[0].name (line 6): every pool needs a name",
        "routes[0].mode (line 9): must be one of mx, smarthost, static; got 'carrier'",
        "retry.rules[0].match.txt (line 12): unknown key (did you mean 'text'? check the "
        "spelling against the keys of `match` in [[retry.rules]] in docs/configuration.md)",
        "log.level (line 14): must be one of debug, info, warning, error; got 3",
    ]


def test_a_bad_value_of_a_required_key_is_one_error_not_two(write_config):
    errors = _errors(
        write_config,
        '[[webhooks]]\nurl = "ftp://example.com/"\nsecret = "0123456789abcdef"\n',
    )
    assert errors == [
        "webhooks[0].url (line 2): must be an http:// or https:// URL, got 'ftp://example.com/'"
    ]
    missing = _errors(write_config, '[[webhooks]]\nsecret = "0123456789abcdef"\n')
    assert missing == [
        "webhooks[0].url (line 1): required: the http:// or https:// address events are posted to"
    ]


def test_the_docs_command_checks_and_rewrites_only_its_part(tmp_path, capsys):
    doc = tmp_path / "configuration.md"
    doc.write_text(f"# Hand-written\n\n{BEGIN}\nstale table\n{END}\n\nMore prose.\n")
    assert main([str(doc), "--check"]) == 1
    assert COMMAND in capsys.readouterr().out
    assert main([str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Hand-written\n\n") and text.endswith(f"{END}\n\nMore prose.\n")
    assert "stale table" not in text and "### `[smtp]`" in text
    assert main([str(doc), "--check"]) == 0
    doc.write_text("no markers here\n")
    assert main([str(doc), "--check"]) == 2
    assert "markers are missing" in capsys.readouterr().err
