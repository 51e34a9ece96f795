"""DATA read in chunks (``relay.wire``) frames message data exactly as stock aiosmtpd
does line by line: the same end of data, the same de-transparency, the same refusals, and
pipelined commands after the data still answered. The framing is checked on its own, then
against a real stock aiosmtpd server over loopback sockets with the same bytes cut into
random chunks (hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiosmtpd.smtp import SMTP
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.intake.protocol import RelaySMTP
from relay.wire import DataFrame, Verdict, _has_long_line, wire_form

SIZE_LIMIT = 3000
LINE_LIMIT = 1001  # aiosmtpd's default, which the relay keeps


def _frame(*chunks: bytes, size_limit: int | None = SIZE_LIMIT) -> tuple[DataFrame, bytes | None]:
    frame = DataFrame(size_limit=size_limit, line_limit=LINE_LIMIT)
    for at, chunk in enumerate(chunks):
        rest = frame.feed(chunk)
        if rest is not None:  # what came after the end, and what the socket had not read yet
            return frame, rest + b"".join(chunks[at + 1 :])
    return frame, None


def test_data_ends_at_the_first_lone_dot_line_and_the_rest_is_handed_back():
    frame, rest = _frame(b"Subject: a\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@y.z>\r\n")
    assert frame.verdict is Verdict.OK
    assert frame.content == b"Subject: a\r\n\r\nbody\r\n"
    assert rest == b"MAIL FROM:<x@y.z>\r\n"


def test_a_first_line_of_a_lone_dot_is_an_empty_message():
    frame, rest = _frame(b".\r\nQUIT\r\n")
    assert (frame.verdict, frame.content, rest) == (Verdict.OK, b"", b"QUIT\r\n")


@pytest.mark.parametrize("cut", range(1, 17))
def test_the_end_marker_is_found_wherever_the_chunks_cut_it(cut):
    data = b"line one\r\nx\r\n.\r\nNOOP\r\n"
    frame, rest = _frame(data[:cut], data[cut:])
    assert frame.content == b"line one\r\nx\r\n"
    assert rest == b"NOOP\r\n"


def test_the_end_marker_is_found_when_it_comes_one_byte_at_a_time():
    data = b"a\r\n..b\r\n.\r\n"
    frame, rest = _frame(*(data[i : i + 1] for i in range(len(data))))
    assert (frame.content, rest) == (b"a\r\n.b\r\n", b"")


def test_a_leading_dot_is_removed_from_every_line():
    frame, rest = _frame(b"..first\r\nmid\r\n...dots\r\n..\r\n.\r\n")
    assert frame.content == b".first\r\nmid\r\n..dots\r\n.\r\n"
    assert rest == b""


@pytest.mark.parametrize(
    "almost", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n. \r\n", b"\r\n.\x00\r\n"]
)
def test_no_line_end_but_crlf_ends_the_data(almost):
    frame, rest = _frame(b"a" + almost + b"b\r\n")
    assert rest is None
    assert not frame.ended


def test_too_much_data_is_refused_and_dropped_as_it_comes():
    frame = DataFrame(size_limit=SIZE_LIMIT, line_limit=LINE_LIMIT)
    line = b"x" * 98 + b"\r\n"
    for _ in range(1000):  # 100 KB against a 3 KB limit
        assert frame.feed(line) is None
        assert len(frame._buffer) <= SIZE_LIMIT + len(line) + 2  # bounded, not accumulated
    assert frame.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert frame.verdict is Verdict.TOO_MUCH


def test_data_of_exactly_the_limit_is_taken():
    body = (b"x" * 98 + b"\r\n") * (SIZE_LIMIT // 100)
    assert len(body) == SIZE_LIMIT
    frame, _ = _frame(body[:500], body[500:] + b".\r\n")
    assert (frame.verdict, frame.content) == (Verdict.OK, body)
    frame, _ = _frame(b"y" + body, b".\r\n")
    assert frame.verdict is Verdict.TOO_MUCH


def test_a_line_longer_than_the_limit_is_refused():
    frame, _ = _frame(b"x" * 999 + b"\r\n.\r\n")
    assert frame.verdict is Verdict.OK
    frame, _ = _frame(b"x" * 1000 + b"\r\n.\r\n")
    assert frame.verdict is Verdict.TOO_LONG


# -- against stock aiosmtpd, over sockets -------------------------------------------------------


class _Keep:
    """A handler that keeps what each server read as the message (and takes the calls
    ``RelaySMTP`` makes of the relay's handler)."""

    shutting_down = False

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    def session_closed(self, session) -> None:
        pass

    async def handle_DATA(self, server, session, envelope):
        self.contents.append(envelope.original_content)
        return "250 OK"


async def _converse(server_class: type[SMTP], chunks: list[bytes]) -> tuple[list[str], list[bytes]]:
    """Send one transaction with ``chunks`` as its data, pipelined NOOP and QUIT after it."""
    loop = asyncio.get_running_loop()
    handler = _Keep()
    server = await loop.create_server(
        lambda: server_class(handler, data_size_limit=SIZE_LIMIT, decode_data=False),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies: list[str] = []

    async def reply() -> str:
        text = ""
        while True:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode()
            text += line
            if line[3:4] != "-":  # the last line of a reply, or "" when the server hung up
                replies.append(line[:3])
                return text

    try:
        await reply()
        for command in (b"EHLO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n"):
            writer.write(command)
            await reply()
        writer.write(b"DATA\r\n")
        await reply()
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)  # let the server read this chunk on its own
        writer.write(b"NOOP\r\nQUIT\r\n")
        # Data holding an earlier end marker leaves the rest to be read as commands.
        while replies[-1] not in ("221", ""):
            await reply()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    return replies, handler.contents


_PIECES = st.sampled_from(
    [b"a", b"text ", b"\r\n", b".", b"..", b"\r", b"\n", b"\x00", b"\r\n.", b".\r\n", b"x" * 400]
)


def _data():
    """Data with one end marker, at its end (an earlier one is a unit test's business)."""
    return (
        st.lists(_PIECES, max_size=40)
        .map(b"".join)
        .filter(lambda data: not (b"\r\n" + data).endswith(b"\r\n.\r"))
        .map(lambda data: data + b"\r\n.\r\n")
        .filter(lambda data: (b"\r\n" + data).find(b"\r\n.\r\n") == len(data) - 3)
    )


_LINES_AT_THE_SIZE_LIMIT = (b"x" * 98 + b"\r\n") * (SIZE_LIMIT // 100)


@settings(max_examples=150, deadline=None)
# The limits' edges, which random data seldom lands on:
@example(data=b"x" * (LINE_LIMIT - 2) + b"\r\n.\r\n", cuts=[500])
@example(data=b"x" * (LINE_LIMIT - 1) + b"\r\n.\r\n", cuts=[500])
@example(data=_LINES_AT_THE_SIZE_LIMIT + b".\r\n", cuts=[1000, 1000])
@example(data=b"y" + _LINES_AT_THE_SIZE_LIMIT + b".\r\n", cuts=[1000, 1000])
@given(data=_data(), cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_chunked_data_is_read_as_stock_aiosmtpd_reads_it(data, cuts):
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(data[at : at + cut])
        at += cut
    chunks.append(data[at:])
    chunks = [chunk for chunk in chunks if chunk]

    async def both():
        stock = await _converse(SMTP, chunks)
        ours = await _converse(RelaySMTP, chunks)
        return stock, ours

    (stock_replies, stock_contents), (our_replies, our_contents) = asyncio.run(both())
    assert our_contents == stock_contents
    assert our_replies == stock_replies


# -- sending -----------------------------------------------------------------------------------


def _aiosmtplib_wire(body: bytes) -> bytes:
    """What aiosmtplib's execute_data_command writes after the 354, by its own functions."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) + b".\r\n"


@settings(max_examples=2000, deadline=None)
@example(body=b"")
@example(body=b".")
@example(body=b".\r\n..\r\n")
@example(body=b"a\n.b\r.c")
@given(body=st.lists(_PIECES, max_size=30).map(b"".join))
def test_the_wire_form_is_what_aiosmtplib_would_send(body):
    assert wire_form(body) == _aiosmtplib_wire(body)


def test_what_the_intake_reads_back_from_the_wire_form_is_the_body():
    body = b".lead\r\n..two\r\nplain\r\nx.\r\n"
    frame, rest = _frame(wire_form(body))
    assert (frame.content, rest) == (body, b"")


@settings(max_examples=1000, deadline=None)
@given(
    lines=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    limit=st.integers(min_value=2, max_value=30),
)
def test_the_long_line_check_agrees_with_splitting_into_lines(lines, limit):
    data = b"".join(b"x" * n + b"\r\n" for n in lines)
    by_splitting = any(len(line) + 2 > limit for line in data.split(b"\r\n")[:-1])
    assert _has_long_line(data, limit) == by_splitting
