"""VERP return paths: one per delivery, signed, robust to case folding, worthless forged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.verp import ReturnPaths

PATHS = ReturnPaths("bounce.example.net", b"a-secret-of-some-length", "bounces")


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_every_delivery_id_round_trips(delivery_id):
    address = PATHS.address(delivery_id)
    local, _, domain = address.partition("@")
    assert domain == "bounce.example.net"
    assert len(local.encode()) <= 64
    assert PATHS.delivery_of(address) == delivery_id


def test_case_folding_and_angle_brackets_do_not_break_the_token():
    address = PATHS.address(4242)
    assert PATHS.delivery_of(address.upper()) == 4242
    assert PATHS.delivery_of(f"<{address}>") == 4242
    assert PATHS.delivery_of(address + ".") == 4242  # trailing dot on the domain


def test_another_secret_or_domain_does_not_verify():
    address = PATHS.address(4242)
    other = ReturnPaths("bounce.example.net", b"another-secret-entirely", "bounces")
    assert other.delivery_of(address) is None
    assert PATHS.delivery_of(address.replace("bounce.example.net", "example.org")) is None


def test_every_single_character_change_is_refused():
    address = PATHS.address(4242)
    local, _, domain = address.partition("@")
    start = len("bounces+")
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(start, len(local)):
        for c in alphabet:
            if c == local[i]:
                continue
            mangled = f"{local[:i]}{c}{local[i + 1 :]}@{domain}"
            found = PATHS.delivery_of(mangled)
            # Base32's last character carries two unused bits: a change there may decode
            # to the same bytes, so the same delivery; never to another one.
            assert found in (None, 4242) and (found is None or i == len(local) - 1), mangled


@pytest.mark.parametrize(
    "address",
    [
        "postmaster@bounce.example.net",
        "bounces@bounce.example.net",
        "bounces+@bounce.example.net",
        "other+aaaaaaaaaaaaaaaaaaaaaaaaaaaaa@bounce.example.net",
        "bounces+!!!!!!!!!!!!!!!!!!!!!!!!!!!!!@bounce.example.net",
        "bounces+aaaa@bounce.example.net",
        "",
        "@",
    ],
)
def test_addresses_without_a_valid_token_name_no_delivery(address):
    assert PATHS.delivery_of(address) is None


def test_find_delivery_in_returned_headers():
    address = PATHS.address(7)
    headers = f"Received: from x by y for <someone@example.org>\nReturn-Path: <{address}>\n"
    assert PATHS.find_delivery(headers) == 7
    assert PATHS.find_delivery(headers.replace(address, address[:-20] + "x" * 20)) is None


def test_is_ours_is_about_the_domain_only():
    assert PATHS.is_ours("anything@Bounce.Example.NET")
    assert not PATHS.is_ours("anything@example.net")
    assert not PATHS.is_ours("no-domain")


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        ReturnPaths("bounce.example.net", b"short")
