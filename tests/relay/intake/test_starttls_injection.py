"""STARTTLS command injection, both directions: whatever is pipelined after STARTTLS before
the handshake is discarded, by the relay as a server and by the relay as a client."""

from __future__ import annotations

import asyncio
import ssl

import trustme

from tests.support.delivery import events_of, eventually, send


async def _line(reader: asyncio.StreamReader) -> bytes:
    """One whole reply (its last line has a space after the code)."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        if len(line) < 4 or line[3:4] != b"-":
            return line


async def test_commands_pipelined_after_starttls_are_discarded_by_the_relay(
    start_tls_relay, client_tls
):
    async with start_tls_relay() as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        await _line(reader)
        writer.write(b"EHLO attacker.example\r\n")
        await _line(reader)
        # One write: STARTTLS plus commands meant to be read as if sent inside TLS.
        writer.write(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n")
        assert (await _line(reader)).startswith(b"220")
        await writer.start_tls(client_tls, server_hostname="relay.test")
        writer.write(b"EHLO attacker.example\r\n")
        await _line(reader)
        writer.write(b"RCPT TO:<x@example.org>\r\n")
        reply = await _line(reader)
        writer.close()
    assert reply.startswith(b"503"), reply  # no MAIL: the injected one was thrown away


class _InjectingUpstream:
    """An upstream that answers STARTTLS with its 220 and, in the same write, a forged 250
    meant to be read as the answer to the client's first command inside TLS."""

    def __init__(self, server_tls: ssl.SSLContext) -> None:
        self.tls = server_tls
        self.port = 0
        self.commands: list[bytes] = []

    async def __aenter__(self) -> _InjectingUpstream:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 evil.test ESMTP\r\n")
        tls = False
        while line := await reader.readline():
            command = line.strip().upper()
            self.commands.append(command)
            if command.startswith((b"EHLO", b"HELO")):
                extensions = b"" if tls else b"250-STARTTLS\r\n"
                writer.write(b"250-evil.test\r\n" + extensions + b"250 8BITMIME\r\n")
            elif command == b"STARTTLS":
                writer.write(b"220 2.0.0 go ahead\r\n250 2.0.0 INJECTED\r\n")
                await writer.drain()
                await writer.start_tls(self.tls)
                tls = True
                continue
            elif command.startswith(b"MAIL"):
                writer.write(b"250 2.1.0 real sender ok\r\n")
            elif command.startswith(b"RCPT"):
                writer.write(b"250 2.1.5 real recipient ok\r\n")
            elif command == b"DATA":
                writer.write(b"354 go\r\n")
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 real data ok\r\n")
            elif command == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


async def test_a_reply_injected_after_starttls_is_not_taken_by_the_relay(start_relay, db, tmp_path):
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    async with _InjectingUpstream(server_tls) as upstream, start_relay(upstream.port) as relay:
        await send(relay, ["x@example.org"])
        await eventually(lambda: _attempted(db))
    [event] = await events_of(db, "x@example.org")
    assert (event["type"], event["reply_text"]) == ("delivered", "250 2.0.0 real data ok")
    assert b"STARTTLS" in upstream.commands
    # Inside TLS the client started over with EHLO: it did not take the forged 250 for it.
    assert upstream.commands[upstream.commands.index(b"STARTTLS") + 1].startswith(b"EHLO")


async def _attempted(db) -> bool:
    return bool(await db.fetchval("SELECT attempts > 0 FROM deliveries"))
