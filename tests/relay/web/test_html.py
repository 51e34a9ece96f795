"""relay/web/html.py: text is escaped unless it is markup the helpers built; hostile values
stay text, in content and in attributes, and a link cannot run script.

Outputs are read back with the standard library's HTML parser, as a browser would read
them: what matters is which elements, attributes and text it finds."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.web.html import (
    UNSAFE_URL,
    Markup,
    concat,
    element,
    link,
    safe_url,
    table,
    trusted,
)

HOSTILE = [
    "<script>alert(1)</script>",
    '"><script>alert(1)</script>',
    "' onmouseover='alert(1)",
    "&lt;b&gt; already escaped &amp; stays visible",
    "</td></tr></table><img src=x onerror=alert(1)>",
    "<!-- a comment --> <![CDATA[ x ]]>",
]


class _Parsed(HTMLParser):
    """Start tags with their attributes, end tags and text, in document order."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[str, object]] = []
        self.tags: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", (tag, dict(attrs))))
        self.tags.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.events and self.events[-1][0] == "text":
            self.events[-1] = ("text", str(self.events[-1][1]) + data)
        else:
            self.events.append(("text", data))

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data))

    def unknown_decl(self, data: str) -> None:
        self.events.append(("decl", data))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_in_an_element_is_text(hostile):
    """A child that is a plain str is one text node with exactly its characters."""
    parsed = _Parsed(element("td", hostile))
    assert parsed.events == [("start", ("td", {})), ("text", hostile), ("end", "td")]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_attribute_values_stay_inside_their_quotes(hostile):
    """Double and single quotes, angle brackets and ampersands in a value cannot end the
    attribute or the tag: the parser finds one input whose value is the hostile text."""
    markup = element("input", type="hidden", name="address", value=hostile)
    parsed = _Parsed(markup)
    assert parsed.events == [
        ("start", ("input", {"type": "hidden", "name": "address", "value": hostile}))
    ]
    assert "'" not in markup.split('value="', 1)[1][:-2]  # single quotes escaped too


def test_markup_is_kept_and_text_beside_it_is_escaped():
    """Markup the helpers built nests as markup; plain strings beside it are text."""
    bold = element("b", "<i>")
    markup = element("p", bold, " & ", "<u>x</u>")
    assert markup == "<p><b>&lt;i&gt;</b> &amp; &lt;u&gt;x&lt;/u&gt;</p>"
    assert _Parsed(markup).tags == ["p", "b"]


def test_adding_or_joining_plain_text_to_markup_escapes_the_text():
    """Markup + str, str + Markup, Markup.join and concat escape the plain parts; the
    result is Markup. Other str operations give a plain str, which a helper then escapes
    (shown twice escaped: visible, never executed)."""
    tag = element("b", "x")
    assert tag + "<s>" == "<b>x</b>&lt;s&gt;"
    assert "<s>" + tag == "&lt;s&gt;<b>x</b>"
    assert isinstance("<s>" + tag, Markup)
    assert Markup(", ").join(["<a>", tag]) == "&lt;a&gt;, <b>x</b>"
    assert concat("<a>", tag, None, 7) == "&lt;a&gt;<b>x</b>7"
    formatted = f"{tag}!"  # an f-string is a plain str again
    assert not isinstance(formatted, Markup)
    assert element("p", formatted) == "<p>&lt;b&gt;x&lt;/b&gt;!</p>"


def test_trusted_markup_is_kept():
    """trusted() is for literal markup in our own code: kept as is."""
    assert concat(trusted("<!doctype html>"), element("br")) == "<!doctype html><br>"


def test_attribute_values_are_text_even_when_markup():
    """An attribute value is always escaped, whatever its type: Markup has no say there
    (the value is the markup's characters, quotes included, not an element)."""
    bold = element("b", '"x"')
    parsed = _Parsed(element("input", value=bold))
    assert parsed.events == [("start", ("input", {"value": str(bold)}))]


def test_boolean_absent_and_renamed_attributes():
    """True: bare attribute; False and None: left out; class_ -> class, aria_label ->
    aria-label; numbers are written as text."""
    assert (
        element("input", name="c", required=True, selected=False, placeholder=None)
        == '<input name="c" required>'
    )
    assert element("td", "1", class_="n") == '<td class="n">1</td>'
    assert element("svg", aria_label="chart", width=240) == (
        '<svg aria-label="chart" width="240"></svg>'
    )


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(document.cookie)",
        " javascript:alert(1)",
        "\x01\x02javascript:alert(1)",
        "java\tscript:alert(1)",
        "java\nscript:alert(1)",
        "java\rscript:alert(1)",
        "javascript\t:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
    ],
)
def test_links_that_could_run_script_are_neutralised(url):
    """However the scheme is disguised (case, leading controls, tabs and line breaks a
    browser drops), a link or form action with a scheme other than http, https or mailto
    points nowhere."""
    assert safe_url(url) == UNSAFE_URL
    parsed = _Parsed(link(url, "click"))
    assert parsed.events[0] == ("start", ("a", {"href": UNSAFE_URL}))
    form = _Parsed(element("form", action=url, method="post"))
    assert form.events[0] == ("start", ("form", {"action": UNSAFE_URL, "method": "post"}))


@pytest.mark.parametrize(
    "url",
    [
        "/report.csv?from=2026-11-02&to=2026-11-03&campaign=%3Cb%3E",
        "?search=a%40b&page=2",
        "/incidents#i42",
        "https://example.org/x?y=1",
        "http://example.org/",
        "mailto:postmaster@example.org",
        # an entity does not make a scheme: the parser sees "&" (escaped), not ":"
        "javascript&colon;alert(1)",
    ],
)
def test_relative_and_web_links_are_kept_and_escaped(url):
    """Relative, http(s) and mailto URLs are kept; the browser reads back exactly them."""
    assert safe_url(url) == url
    parsed = _Parsed(link(url, "go"))
    assert parsed.events == [("start", ("a", {"href": url})), ("text", "go"), ("end", "a")]


def test_link_text_is_escaped():
    assert link("/x", "<b>bold</b>") == '<a href="/x">&lt;b&gt;bold&lt;/b&gt;</a>'


@pytest.mark.parametrize("tag", ["script", "style", "iframe", "noscript", "xmp", "a b", "A", ""])
def test_elements_escaping_cannot_protect_are_refused(tag):
    """script, style and the other raw-text elements, and malformed tag names: ValueError."""
    with pytest.raises(ValueError, match="refused"):
        element(tag, "x")


@pytest.mark.parametrize("name", ["onclick", "onerror", "on_load", "style", 'x"y', "a b", "1x"])
def test_event_handler_style_and_malformed_attributes_are_refused(name):
    with pytest.raises(ValueError, match="refused"):
        element("p", **{name: "alert(1)"})


def test_void_elements_take_no_content():
    assert element("br") == "<br>"
    assert element("input", None, name="x") == '<input name="x">'
    with pytest.raises(ValueError, match="void"):
        element("input", "<x>")


def test_table_escapes_headers_and_cells_and_aligns_numbers():
    """Headers and plain cells are escaped, markup cells kept, None is an empty cell,
    numeric columns get class="n"."""
    markup = table(
        ["<th>", "n", ""],
        [["<script>x</script>", 5, link("/a", "a")], [None, 0, "&"]],
        numeric={1},
    )
    assert markup == (
        '<div class="scroll"><table><thead><tr><th scope="col">&lt;th&gt;</th>'
        '<th scope="col">n</th><th scope="col"></th></tr></thead>'
        '<tbody><tr><td>&lt;script&gt;x&lt;/script&gt;</td><td class="n">5</td>'
        '<td><a href="/a">a</a></td></tr>'
        '<tr><td></td><td class="n">0</td><td>&amp;</td></tr></tbody></table></div>'
    )
    assert "script" not in _Parsed(markup).tags


@given(st.text())
def test_any_text_reads_back_as_itself(text):
    """Whatever the characters, a text child and an attribute value read back unchanged,
    and no element appears that the code did not build."""
    parsed = _Parsed(element("p", text, title=text))
    texts = [e[1] for e in parsed.events if e[0] == "text"]
    assert parsed.tags == ["p"]
    assert parsed.events[0] == ("start", ("p", {"title": text}))
    assert "".join(str(t) for t in texts) == text
