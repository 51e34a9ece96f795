"""HTML for the admin pages, built so that text is escaped unless the code says otherwise.

Every helper here takes ``Content``: a plain ``str`` (or a number) is *text* and is escaped;
only a ``Markup`` is kept as it is. A ``Markup`` comes from the helpers themselves
(``element``, ``link``, ``table``, ``concat``) or from ``trusted``, which is for markup
written literally in our own code. So a value from outside (a bounce text, a campaign, an
address, a query parameter) becomes HTML only through a helper that escapes it: forgetting
to escape is not possible, the worst mistake is text shown escaped twice.

Attribute values are always text (escaped with quotes), whatever their type. URL attributes
(``href``, ``src``, ``action`` ...) keep relative URLs and http, https and mailto ones; any
other scheme (``javascript:``, ``data:``, ``vbscript:`` ...) is replaced by ``UNSAFE_URL``,
judged the way a browser reads the URL (tabs and line breaks dropped, leading controls and
spaces stripped). Tag and attribute names come from our code, never from outside, and are
checked all the same: event handlers (``on*``), ``style`` and the elements whose content is
not parsed as text (``script``, ``style`` ...) are refused with ``ValueError``, since no
escaping can make them safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape as _escape_html
from typing import LiteralString

__all__ = [
    "UNSAFE_URL",
    "Content",
    "Markup",
    "concat",
    "element",
    "link",
    "safe_url",
    "table",
    "trusted",
]

UNSAFE_URL = "about:invalid#unsafe-url"  # what a refused URL becomes: a link to nowhere


class Markup(str):
    """HTML that needs no escaping: built by this module's helpers or vouched for with
    ``trusted``. Adding text to it escapes the text; ``join`` escapes the parts. Outside
    this module it is never constructed directly: ``Markup(value)`` is exactly the
    forgotten escape this module exists to rule out."""

    __slots__ = ()

    def __add__(self, other: object) -> Markup:
        return Markup(str.__add__(self, _escape(other)))

    def __radd__(self, other: object) -> Markup:
        # Python asks a str subclass's __radd__ before str.__add__, so "text" + Markup lands here.
        return Markup(str.__add__(_escape(other), self))

    def join(self, parts: Iterable[object]) -> Markup:
        return Markup(str.join(self, (_escape(p) for p in parts)))


Content = Markup | str | int | None

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
# Content of these is raw text (or not parsed at all): escaping cannot keep a value in it.
_RAW_TEXT = frozenset(
    {"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"}
)
_URL_ATTRIBUTES = frozenset(
    {"href", "src", "action", "formaction", "cite", "poster", "background", "ping"}
)
_SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_TAG = re.compile(r"[a-z][a-z0-9]*\Z")
_ATTRIBUTE = re.compile(r"[a-z][a-z0-9-]*\Z")
# The WHATWG URL parser drops ASCII tabs and line breaks anywhere and strips C0 controls and
# spaces at both ends before it reads the scheme: "java\tscript:" is javascript:.
_URL_IGNORED = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")


def _escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(_escape_html(str(value), quote=True))


def trusted(markup: LiteralString) -> Markup:
    """Markup written literally in our own code (a doctype, a fixed fragment): kept as is.
    Never for a value that came from outside; build that with ``element`` instead."""
    return Markup(markup)


def concat(*parts: Content) -> Markup:
    """The parts one after the other; plain text among them is escaped."""
    return Markup("").join(parts)


def safe_url(url: str) -> str:
    """``url`` if following it cannot run anything: relative, or http, https or mailto;
    else ``UNSAFE_URL``."""
    cleaned = _URL_IGNORED.sub("", url).strip(_C0_AND_SPACE)
    scheme = _SCHEME.match(cleaned)
    if scheme is not None and scheme[1].lower() not in _SAFE_SCHEMES:
        return UNSAFE_URL
    return url


def _attribute(key: str, value: str | int | bool | None) -> str:
    # Python names: class_ -> class, aria_label -> aria-label, font_size -> font-size.
    name = key.rstrip("_").replace("_", "-")
    if not _ATTRIBUTE.match(name) or name.startswith("on") or name == "style":
        raise ValueError(
            f"attribute {name!r} refused: event handlers and inline style would run or apply "
            "whatever the value holds (and the Content-Security-Policy blocks them anyway)"
        )
    if value is None or value is False:
        return ""
    if value is True:
        return f" {name}"
    text = str(value)
    if name in _URL_ATTRIBUTES:
        text = safe_url(text)
    return f' {name}="{_escape_html(text, quote=True)}"'


def element(tag: str, *children: Content, **attributes: str | int | bool | None) -> Markup:
    """``<tag attributes>children</tag>``: children that are not ``Markup`` are escaped, and
    so is every attribute value (True: the bare attribute; False or None: left out)."""
    if not _TAG.match(tag) or tag in _RAW_TEXT:
        raise ValueError(
            f"element {tag!r} refused: its content is not parsed as text, so escaping "
            "cannot keep a value inside it"
        )
    opening = f"<{tag}{''.join(_attribute(k, v) for k, v in attributes.items())}>"
    if tag in _VOID:
        if any(c is not None and c != "" for c in children):
            raise ValueError(f"<{tag}> is a void element and holds no content")
        return Markup(opening)
    return Markup(f"{opening}{concat(*children)}</{tag}>")


def link(href: str, *text: Content, **attributes: str | int | bool | None) -> Markup:
    """``<a href>text</a>``; an ``href`` that could run script becomes ``UNSAFE_URL``."""
    return element("a", *text, href=href, **attributes)


def table(
    headers: Sequence[Content],
    rows: Iterable[Sequence[Content]],
    numeric: Iterable[int] = (),
    *,
    caption: Content = None,
    foot: Sequence[Content] | None = None,
) -> Markup:
    """A table with one header row (``th scope="col"``), an optional ``caption`` and a
    footer row ``foot`` (a totals row), in a ``div class="scroll"`` that scrolls sideways on
    a narrow screen instead of widening the page. Columns at the ``numeric`` positions are
    right-aligned (``class="n"``). Cells that are not ``Markup`` are escaped."""
    right = frozenset(numeric)

    def cells(tag: str, row: Sequence[Content]) -> Markup:
        return element(
            "tr", *(element(tag, c, class_="n" if i in right else None) for i, c in enumerate(row))
        )

    head = element("thead", element("tr", *(element("th", h, scope="col") for h in headers)))
    body = element("tbody", *(cells("td", r) for r in rows))
    tail = element("tfoot", cells("td", foot)) if foot is not None else None
    titled = element("caption", caption) if caption is not None else None
    return element("div", element("table", titled, head, body, tail), class_="scroll")
