"""The bounded MIME reader: a message's raw bytes as a tree of ``_Part``, and the
bounce's own words from its text parts.

Input that is no message raises ``NotAMessage``; it is cut at ``MAX_BYTES``, and nesting
deeper than ``MAX_DEPTH`` or more than ``MAX_PARTS`` parts raise ``MalformedBounce``.
Transfer encodings, charsets, RFC 2047 words and HTML are decoded as well as they can be,
without raising.
"""

from __future__ import annotations

import binascii
import codecs
import email.base64mime
import email.quoprimime
import html
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 10
MAX_PARTS = 500


class NotAMessage(ValueError):
    """The input is not an RFC 5322 message at all (no header block, binary garbage)."""


class MalformedBounce(ValueError):
    """A message too deep/too many parts/too large to parse safely (caller drops it)."""


@dataclass
class _Part:
    headers: list[tuple[str, str]]
    header_text: str
    ctype: str
    params: dict[str, str]
    body: bytes = b""
    children: list[_Part] = field(default_factory=list)
    _decoded: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def decoded(self, name: str) -> str:
        """The field's value with RFC 2047 words decoded ("" when absent), decoded once
        however many heuristics read it."""
        name = name.lower()
        if name not in self._decoded:
            self._decoded[name] = _header_value(self.get(name) or "")
        return self._decoded[name]

    def text(self) -> str:
        return _decode_text(self.body, self.params.get("charset", "utf-8"))

    def walk(self, *, into_messages: bool = True) -> Iterator[_Part]:
        yield self
        if not into_messages and self.ctype in _MESSAGE_TYPES:
            return
        for child in self.children:
            yield from child.walk(into_messages=into_messages)


_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_MBOX_FROM = re.compile(rb"^>?From ")
_PARAM = re.compile(r';\s*([\w.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_BOUNDARY_LINE = re.compile(rb"^--([!-~]{6,70}?)(?:--)?[ \t\r]*$", re.M)
# Python's punycode codec (and IDNA, built on it) decodes in quadratic time: no mail
# charset anyway.
_SLOW_CODECS = frozenset({"punycode", "idna"})


class _Counter:
    def __init__(self) -> None:
        self.parts = 0

    def bump(self, depth: int) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedBounce(f"more than {MAX_PARTS} MIME parts")
        if depth > MAX_DEPTH:
            raise MalformedBounce(f"MIME nesting deeper than {MAX_DEPTH}")


def _split_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """Header lines (unfolded later) and the body. The header block ends at
    the first empty line, or at the first line that is neither a field nor a
    continuation (lenient, like most MUAs)."""
    # Each field's pieces are joined once at the end: a field folded over many lines
    # must not be copied once per line.
    fields: list[list[bytes]] = []
    pos = 0
    size = len(data)
    body = b""
    while pos < size:
        end = data.find(b"\n", pos)
        if end < 0:
            end = size
        line = data[pos:end].rstrip(b"\r")
        if not line.strip():
            body = data[end + 1 :]
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line.strip())
        elif _HEADER_LINE.match(line) or (not fields and _MBOX_FROM.match(line)):
            fields.append([line])
        else:
            body = data[pos:]
            break
        pos = end + 1
    return [b" ".join(pieces) for pieces in fields], body


def _header_value(raw: str) -> str:
    """RFC 2047 words decoded; a broken encoded word is kept as written."""
    if "=?" not in raw:
        return raw
    try:
        words = _decode_words(raw)
        if words is None:
            return raw
        return "".join(_decode_text(chunk, charset or "utf-8") for chunk, charset in words)
    except Exception:  # header decoding is best effort
        return raw


# The opening of an RFC 2047 encoded word: "=?charset?Q?" (the email package's ``ecre``
# up to its lazy ``(?P<encoded>.*?)\?=``, which is looked for separately).
_ENCODED_WORD_HEAD = re.compile(r"=\?([^?]*?)\?([qQbB])\?")


class _NextIndex:
    """``text.find(needle, pos)``, remembering the last answer: asked again from a position
    it still answers for, it does not scan again (so a run of queries moving forward scans
    the text once)."""

    def __init__(self, text: str, needle: str) -> None:
        self._text = text
        self._needle = needle
        self._from = len(text) + 1  # the answer below holds for positions from here ...
        self._found = -1  # ... up to it (-1: up to the end)

    def at(self, pos: int) -> int:
        if not (self._from <= pos and (self._found < 0 or pos <= self._found)):
            self._from, self._found = pos, self._text.find(self._needle, pos)
        return self._found


def _encoded_words(text: str) -> Iterator[tuple[re.Match[str], int]]:
    """Each RFC 2047 encoded word as ``ecre`` of ``email.header`` finds it: its opening
    ``=?charset?Q?`` and where its closing ``?=`` starts (the first one after the opening,
    with no line end in between). ecre looked for the closing ``?=`` from every opening,
    quadratic when none follows; here the next ``?=`` and line end are found once for all
    the openings that share them, and with no ``?=`` left no later opening can close."""
    closes, newlines = _NextIndex(text, "?="), _NextIndex(text, "\n")
    search = 0
    while (head := _ENCODED_WORD_HEAD.search(text, search)) is not None:
        close = closes.at(head.end())
        if close < 0:
            return
        newline = newlines.at(head.end())
        if 0 <= newline < close:  # ecre's encoded text (``.*?``) does not cross a line end
            search = head.start() + 1
            continue
        yield head, close
        search = close + 2


def _has_encoded_word(text: str) -> bool:
    return next(_encoded_words(text), None) is not None


def _split_encoded(line: str) -> list[str]:
    """``ecre.split(line)``: text, charset, encoding, encoded text, text, ..."""
    parts: list[str] = []
    pos = 0
    for head, close in _encoded_words(line):
        parts += [line[pos : head.start()], head.group(1), head.group(2), line[head.end() : close]]
        pos = close + 2
    parts.append(line[pos:])
    return parts


def _decode_words(header: str) -> list[tuple[bytes, str | None]] | None:
    """What ``email.header.decode_header`` returns for ``header`` (None where it returns
    the header unchanged: no encoded word), in time linear in its size: the same steps
    without its ``list.pop(0)``, ``del`` in a loop and ``bytes +=``."""
    if not _has_encoded_word(header):
        return None
    words: list[tuple[str, str | None, str | None]] = []
    for line in header.splitlines():
        parts = _split_encoded(line)
        for i in range(0, len(parts), 4):
            unencoded = parts[i].lstrip() if i == 0 else parts[i]
            if unencoded:
                words.append((unencoded, None, None))
            if i + 3 < len(parts):
                words.append((parts[i + 3], parts[i + 2].lower(), parts[i + 1].lower()))
    # Blanks between two encoded words are dropped (RFC 2047 section 6.2).
    dropped = {
        n - 1
        for n, w in enumerate(words)
        if n > 1 and w[1] and words[n - 2][1] and words[n - 1][0].isspace()
    }
    decoded: list[tuple[bytes, str | None]] = []
    for n, (text, encoding, charset) in enumerate(words):
        if n in dropped:
            continue
        if encoding is None:
            decoded.append((text.encode("raw-unicode-escape"), charset))
        elif encoding == "q":
            word = email.quoprimime.header_decode(text)
            decoded.append((word.encode("raw-unicode-escape"), charset))
        else:
            padded = text + "==="[: (4 - len(text) % 4) % 4]
            decoded.append((email.base64mime.decode(padded), charset))
    # (With nothing left the email package returns a None word, which read as "keep it as
    # written".)
    return _collapse(decoded) if decoded else None


def _collapse(words: list[tuple[bytes, str | None]]) -> list[tuple[bytes, str | None]]:
    """Runs of words in one charset joined (unencoded ones with a blank), each run once."""
    out: list[tuple[bytes, str | None]] = []
    run: list[bytes] = []
    charset: str | None = None
    for word, word_charset in words:
        if run and word_charset != charset:
            out.append(((b" " if charset is None else b"").join(run), charset))
            run = []
        charset = word_charset
        run.append(word)
    out.append(((b" " if charset is None else b"").join(run), charset))
    return out


def _parse_entity(data: bytes, depth: int, counter: _Counter, default: str = "text/plain") -> _Part:
    counter.bump(depth)
    raw_lines, body = _split_headers(data)
    headers: list[tuple[str, str]] = []
    texts: list[str] = []
    for raw in raw_lines:
        line = raw.decode("utf-8", "replace")
        texts.append(line)
        name, sep, value = line.partition(":")
        if sep and not _MBOX_FROM.match(raw):
            headers.append((name.strip().lower(), value.strip()))
    part = _Part(headers=headers, header_text="\n".join(texts), ctype=default, params={})
    content_type = part.get("content-type")
    if content_type:
        main = content_type.split(";", 1)[0].strip().lower()
        if "/" in main:
            part.ctype = main
        part.params = {
            k.lower(): v.strip('"').replace('\\"', '"') for k, v in _PARAM.findall(content_type)
        }
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    if part.ctype.startswith("multipart/") and part.params.get("boundary"):
        part.body = body
        child_default = "message/rfc822" if part.ctype == "multipart/digest" else "text/plain"
        chunks = _split_multipart(body, part.params["boundary"], depth, counter)
        if not chunks and (guessed := _guess_boundary(body)) is not None:
            chunks = _split_multipart(body, guessed, depth, counter)
        for chunk in chunks:
            part.children.append(_parse_entity(chunk, depth + 1, counter, child_default))
        return part
    part.body = _decode_body(body, cte)
    if part.ctype in _MESSAGE_TYPES and part.body.strip():
        part.children.append(_parse_entity(part.body.lstrip(b"\n"), depth + 1, counter))
    return part


def _split_multipart(body: bytes, boundary: str, depth: int, counter: _Counter) -> list[bytes]:
    delimiter = re.compile(
        rb"^--" + re.escape(boundary.encode("utf-8", "replace")) + rb"(--)?[ \t\r]*$", re.M
    )
    chunks: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start : match.start()].removesuffix(b"\n"))
            # Refuse early: a 10,000-part bomb must not be materialised.
            if len(chunks) + counter.parts > MAX_PARTS:
                raise MalformedBounce(f"more than {MAX_PARTS} MIME parts")
        if match.group(1):
            start = None
            break
        start = match.end() + 1
    if start is not None and start < len(body):
        chunks.append(body[start:])  # a truncated last part is kept
    if depth + 1 > MAX_DEPTH and chunks:
        raise MalformedBounce(f"MIME nesting deeper than {MAX_DEPTH}")
    return chunks


def _guess_boundary(body: bytes) -> str | None:
    """The boundary actually used when the declared one never occurs (a
    rewritten header): the first ``--token`` line (in the first 200 KB) of
    which there are two after the start. The delimiter lines are counted in one
    pass (counting each candidate over the whole body was quadratic)."""
    lines: Counter[bytes] = Counter()
    candidates: list[bytes] = []
    for match in _BOUNDARY_LINE.finditer(body):
        token = match.group(1)
        if match.start() > 0:
            lines[token] += 1
        if match.start() < 200_000:
            candidates.append(token)
    for token in candidates:
        if lines[token] >= 2:
            return token.decode("ascii", "replace")
    return None


def _decode_body(body: bytes, cte: str) -> bytes:
    try:
        if cte == "base64":
            cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
            return binascii.a2b_base64(cleaned)
        if cte == "quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        return body
    return body


def _decode_text(data: bytes, charset: str) -> str:
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    if name in {"us-ascii", "ascii", "unknown-8bit", "x-unknown", "8bit", "binary"}:
        name = "utf-8"
    try:
        if codecs.lookup(name).name in _SLOW_CODECS:
            name = "utf-8"
    except (LookupError, ValueError, TypeError):
        name = "utf-8"
    try:
        text = data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _prepare(raw: bytes) -> bytes:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise NotAMessage("input is not bytes")
    data = bytes(raw[:MAX_BYTES]).replace(b"\r\n", b"\n")
    data = data.lstrip(b"\r\n\t ")
    if not data:
        raise NotAMessage("empty input")
    first = data.split(b"\n", 1)[0]
    if not (_HEADER_LINE.match(first) or _MBOX_FROM.match(first)):
        raise NotAMessage("no header block")
    blank = re.search(rb"\n[ \t\r]*\n", data)
    head = data[: blank.start()] if blank else data
    if b"\x00" in head:
        raise NotAMessage("NUL byte in the header block")
    return data


def _body_text(root: _Part) -> str:
    """The bounce's own words: its text parts, not the returned original's."""
    plain: list[str] = []
    markup: list[str] = []
    for part in root.walk(into_messages=False):
        if part.children or part.ctype in _HEADER_TYPES:
            continue
        if part.ctype == "text/html":
            markup.append(_strip_html(part.text()))
        elif part.ctype.startswith(("text/", "multipart/")) or part.ctype in _DSN_TYPES:
            # (a multipart whose boundary never occurs is read as text)
            plain.append(part.text())
    return "\n\n".join(plain or markup)


def _strip_html(text: str) -> str:
    """The words of an HTML part: scripts and styles dropped, block tags as line breaks,
    other tags as blanks, entities decoded. Each step is one pass: an element or a tag
    that never closes is searched for once, not once per opening after it (``.*?`` and
    ``[^>]*`` patterns did that, quadratic on ``<script>`` or ``<p`` repeated)."""
    text = _drop_elements(text)
    text = _replace_tags(text, _BLOCK_TAG, "\n")
    return html.unescape(_replace_tags(text, _ANY_TAG, " "))


_ELEMENT_OPEN = re.compile(r"<(script|style)\b", re.I)
_ELEMENT_CLOSE = {
    "script": re.compile(r"</script\s*>", re.I),
    "style": re.compile(r"</style\s*>", re.I),
}
_BLOCK_TAG = re.compile(r"<br\s*/?>|</?(?:p|div|tr|li|h\d|table)\b", re.I)
_ANY_TAG = re.compile(r"<")


def _drop_elements(text: str) -> str:
    r"""``re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)`` in one pass: an
    element runs to the first closing tag of its name; once a name has no closing tag
    left, no later opening of it can close either."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()
    search = 0
    while (opening := _ELEMENT_OPEN.search(text, search)) is not None:
        name = opening.group(1).lower()
        close = None if name in unclosed else _ELEMENT_CLOSE[name].search(text, opening.end())
        if close is None:
            unclosed.add(name)
            search = opening.start() + 1
            continue
        out += [text[pos : opening.start()], " "]
        pos = search = close.end()
    out.append(text[pos:])
    return "".join(out)


def _replace_tags(text: str, opening: re.Pattern[str], by: str) -> str:
    """Each tag that ``opening`` starts (a ``<br>`` is whole already) replaced by ``by``, up
    to its ``>``: ``re.sub(opening.pattern + "[^>]*>", by, text)`` in one pass (with no
    ``>`` left, no later opening can close)."""
    out: list[str] = []
    pos = search = 0
    while (tag := opening.search(text, search)) is not None:
        end = tag.end() if tag.group().endswith(">") else text.find(">", tag.end()) + 1
        if end == 0:
            break
        out += [text[pos : tag.start()], by]
        pos = search = end
    out.append(text[pos:])
    return "".join(out)
