"""Other spellings of the same address, for the tests of the one normal form (UTS 46 /
IDNA 2008) in policies and through the relay."""

from __future__ import annotations


def full_width(text: str) -> str:
    """``text`` with its ASCII letters, digits and punctuation in full-width forms."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
