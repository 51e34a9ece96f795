"""The reply reader parses what an upstream sends, over a real loopback connection.

Each test sets up a session with aiosmtplib (greeting, EHLO) against a server that then
answers one ``NOOP`` with the exact bytes the test gives it, hands the connection to
``ReplyReader`` as relay.delivery.upstream does, and reads. Hostile bytes (a line that never
ends, a flood of replies nobody asked for, a multi-line reply whose codes differ) end as a
``MalformedReply`` or a ``surplus`` with memory held to the reader's bounds, never as a hang
or a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiosmtplib
import pytest

from relay.delivery.reply_reader import MAX_REPLY_BYTES, MalformedReply, ReplyReader


@asynccontextmanager
async def _session(
    answer: bytes | Callable[[asyncio.StreamWriter], None],
) -> AsyncIterator[ReplyReader]:
    """A reader on a set-up session; the server answers the first NOOP with ``answer``."""

    sessions: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sessions.add(task)
        try:
            await _dialogue(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _dialogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-test\r\n250 PIPELINING\r\n")
        while line := await reader.readline():
            if line.startswith(b"NOOP"):
                if callable(answer):
                    answer(writer)
                else:
                    writer.write(answer)
            elif line.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
    try:
        await client.connect()
        await client.ehlo()
        yield ReplyReader.install(client)
    finally:
        client.close()
        server.close()
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        await server.wait_closed()


async def test_replies_that_arrive_together_are_read_in_order() -> None:
    batch = b"250 2.1.0 sender ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go ahead\r\n"
    async with _session(batch) as reader:
        reader.write(b"NOOP\r\n", replies=3)  # as if three commands went in that write
        got = [await reader.next_reply(2) for _ in range(3)]
    assert got == [
        (250, "2.1.0 sender ok"),
        (550, "5.1.1 no such\n5.1.1 user"),
        (354, "go ahead"),
    ]
    assert reader.unread == 0
    assert not reader.partial


async def test_a_reply_split_byte_by_byte_is_one_reply() -> None:
    def dribble(writer: asyncio.StreamWriter) -> None:
        for byte in b"250-first\r\n250 second\r\n":
            writer.write(bytes([byte]))

    async with _session(dribble) as reader:
        reader.write(b"NOOP\r\n")
        assert await reader.next_reply(2) == (250, "first\nsecond")


@pytest.mark.parametrize(
    ("answer", "starting"),
    [
        (b"hello, no reply\r\n", b"hell"),
        (b"2_50 looks like a number\r\n", b"2_50"),
        (b"250-first\r\n451 second code\r\n", b"451 "),  # RFC 5321 4.2.1: one code a reply
        (b"250 ok\r\n\r\n", b"\r\n"),  # a good reply, then an empty line
    ],
)
async def test_a_line_that_is_no_reply_breaks_the_stream(answer: bytes, starting: bytes) -> None:
    async with _session(answer) as reader:
        reader.write(b"NOOP\r\n")
        if answer.startswith(b"250 ok"):
            assert await reader.next_reply(2) == (250, "ok")
        with pytest.raises(MalformedReply, match="malformed reply line"):
            await reader.next_reply(2)
        assert reader.malformed is not None and reader.malformed.startswith(starting)


async def test_a_line_that_never_ends_is_cut_off_at_the_reply_bound() -> None:
    endless = b"250 " + b"x" * (4 * MAX_REPLY_BYTES)
    async with _session(endless) as reader:
        reader.write(b"NOOP\r\n")
        with pytest.raises(MalformedReply, match="too long"):
            await reader.next_reply(5)
        assert not reader.transport.is_reading()  # nothing more is read and held


async def test_a_flood_of_replies_nobody_asked_for_is_neither_kept_nor_read() -> None:
    """One command, one reply owed: the first reply of a flood is kept, the second is the
    surplus that puts the connection out of step, and the reader stops there (it pauses the
    transport) instead of holding or parsing the rest."""
    line = b"250 " + b"y" * 96 + b"\r\n"
    flood = line * 50_000  # 5 MB
    async with _session(flood) as reader:
        reader.write(b"NOOP\r\n")
        assert await reader.next_reply(2) == (250, "y" * 96)
        for _ in range(200):
            if reader.surplus:
                break
            await asyncio.sleep(0.01)
        assert reader.surplus == 1
        assert reader.unread == 0
        assert not reader.transport.is_reading()


async def test_a_pipelined_batch_is_owed_one_reply_a_command() -> None:
    """Three commands in one write are owed three replies; a fourth is surplus."""
    async with _session(b"250 a\r\n250 b\r\n354 c\r\n250 d\r\n") as reader:
        reader.write(b"NOOP\r\n", replies=3)
        got = [await reader.next_reply(2) for _ in range(3)]
        assert [code for code, _ in got] == [250, 250, 354]
        for _ in range(200):
            if reader.surplus:
                break
            await asyncio.sleep(0.01)
        assert (reader.surplus, reader.unread) == (1, 0)


async def test_no_reply_in_time_is_a_read_timeout() -> None:
    async with _session(b"") as reader:
        reader.write(b"NOOP\r\n")
        with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
            await reader.next_reply(0.2)


async def test_a_closed_connection_after_its_replies_gives_them_then_says_lost() -> None:
    def answer_and_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"250 last words\r\n")
        writer.close()

    async with _session(answer_and_close) as reader:
        reader.write(b"NOOP\r\n")
        assert await reader.next_reply(2) == (250, "last words")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await reader.next_reply(2)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            reader.write(b"NOOP\r\n")
