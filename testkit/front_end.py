"""A keep-alive HTTP/1.1 front end on 127.0.0.1 before a server that closes every connection, as a cloud edge sits.

`tursodb --sync-server` answers every request with `Connection: close`. `FrontEnd` keeps the client's connection open
across requests, opens one connection to the server per request, and streams each answer back re-framed: by its
Content-Length, chunked as it came, or chunked by the front end when the server marks the end by closing. Nothing is
buffered whole. The client's side may use TLS (any server `ssl.SSLContext`).

`FrontEnd` runs in this process, on an event loop in a thread named `testkit-front-end`; `FrontEndProcess` runs it in
a child process (`python -m testkit.front_end UPSTREAM_PORT [--certfile F --keyfile F]`) for benchmarks. Counters:
`connections` (client connections accepted) and `requests` (requests forwarded). Every wait is bounded.
"""

import argparse
import asyncio
import json
import ssl
from collections.abc import Awaitable
from typing import Optional, TypeVar

from testkit._child import ChildServer, serve_commands
from testkit._loop_server import HOST, LoopServer

CHUNK_SIZE = 64 * 1024
# Upper bound for connecting to the server and for any read or write. A pull that asks the server to hold it (long
# poll) waits for its answer longer: ANSWER_SECONDS.
SOCKET_SECONDS = 10.0
ANSWER_SECONDS = 120.0
# How long a client connection may sit idle between requests before the front end closes it.
IDLE_SECONDS = 60.0
# The largest request or answer head accepted.
HEAD_LIMIT = 64 * 1024
THREAD_NAME = "testkit-front-end"
# Headers that describe one connection, not the message, so they are never passed on (RFC 9110, section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}

_T = TypeVar("_T")


class BadMessage(Exception):
    """A request or answer that is not HTTP/1.1 the front end can frame; the client's connection is then closed."""


class _Head:
    """The start line and headers of a request or an answer, as read."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        if len(self.start) < 2:
            raise BadMessage(f"bad start line {lines[0]!r}")
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise BadMessage(f"bad header line {line!r}")
            self.headers.append((name.strip(), value.strip()))

    def values(self, name: str) -> list[str]:
        """The values of every header of this name, comma-separated lists split up, lower-cased."""
        found = [value for key, value in self.headers if key.lower() == name]
        return [item.strip().lower() for value in found for item in value.split(",") if item.strip()]

    def content_length(self) -> Optional[int]:
        """The body's length, or None if the head gives none."""
        lengths = {value for key, value in self.headers if key.lower() == "content-length"}
        if not lengths:
            return None
        length = lengths.pop()
        if lengths or not length.isdigit():
            raise BadMessage(f"bad Content-Length {sorted(lengths | {length})}")
        return int(length)

    def chunked(self) -> bool:
        """Whether the body comes in chunks (which then decide its end, whatever Content-Length says)."""
        return "chunked" in self.values("transfer-encoding")

    def end_to_end(self) -> list[tuple[str, str]]:
        """The headers to pass on: neither hop-by-hop ones nor those the Connection header names, and no
        Content-Length beside chunks."""
        dropped = HOP_BY_HOP | set(self.values("connection"))
        if self.chunked():
            dropped.add("content-length")
        return [(key, value) for key, value in self.headers if key.lower() not in dropped]


def _encode_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start, *(f"{key}: {value}" for key, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def _bounded(awaitable: Awaitable[_T], seconds: float = SOCKET_SECONDS) -> _T:
    return await asyncio.wait_for(awaitable, seconds)


async def _read_head(reader: asyncio.StreamReader, seconds: float) -> Optional[_Head]:
    """The next head on `reader`, or None if the peer closed cleanly before sending one."""
    try:
        raw = await _bounded(reader.readuntil(b"\r\n\r\n"), seconds)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise BadMessage("the peer closed in the middle of a head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage(f"a head longer than {HEAD_LIMIT} bytes") from None
    return _Head(raw)


async def _copy_exactly(reader: asyncio.StreamReader, writer: Optional[asyncio.StreamWriter], length: int) -> None:
    # writer None: read and drop (a request whose server could not be reached).
    while length > 0:
        chunk = await _bounded(reader.read(min(length, CHUNK_SIZE)))
        if not chunk:
            raise BadMessage(f"the peer closed with {length} bytes of the body still to come")
        length -= len(chunk)
        if writer is not None:
            writer.write(chunk)
            await _bounded(writer.drain())


async def _copy_chunked(reader: asyncio.StreamReader, writer: Optional[asyncio.StreamWriter]) -> None:
    # Chunks pass as they come, framing included; the last one (size 0) and the trailers end the body.
    while True:
        size_line = await _bounded(reader.readuntil(b"\r\n"))
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadMessage(f"bad chunk size line {size_line!r}") from None
        if writer is not None:
            writer.write(size_line)
        if size == 0:
            while (trailer := await _bounded(reader.readuntil(b"\r\n"))) != b"\r\n":
                if writer is not None:
                    writer.write(trailer)
            if writer is not None:
                writer.write(b"\r\n")
                await _bounded(writer.drain())
            return
        await _copy_exactly(reader, writer, size + 2)  # the chunk and its CRLF


async def _copy_until_closed_as_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # An answer whose end is the server closing: re-framed as chunks, so that the client's connection can stay open.
    while chunk := await _bounded(reader.read(CHUNK_SIZE)):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await _bounded(writer.drain())
    writer.write(b"0\r\n\r\n")
    await _bounded(writer.drain())


async def _copy_body(
    head: _Head, reader: asyncio.StreamReader, writer: Optional[asyncio.StreamWriter], has_body: bool
) -> None:
    """Copy the body that `head` announces, by its framing; a request with neither framing has none."""
    if not has_body:
        return
    if head.chunked():
        await _copy_chunked(reader, writer)
        return
    length = head.content_length()
    if length is not None:
        await _copy_exactly(reader, writer, length)


def _answer_has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


class FrontEnd(LoopServer):
    """A keep-alive HTTP/1.1 front end on 127.0.0.1 before the server on `upstream_port`; see the module docstring.

    `ssl_context`, a server-side context with its certificate loaded, makes the client's side TLS (`url` is then
    https). Use it as a context manager, or call `close()`.
    """

    def __init__(self, upstream_port: int, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.requests = 0
        super().__init__(THREAD_NAME, ssl_context, limit=HEAD_LIMIT)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the client's requests one after the other, until it closes, idles out or sends what cannot be
        framed."""
        self.connections += 1
        try:
            while await self._forward_one(reader, writer):
                pass
        except (BadMessage, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client's connection ends here, as an edge would end it

    async def _forward_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Forward one request and its answer; True if the client's connection stays open for another."""
        request = await _read_head(reader, IDLE_SECONDS)
        if request is None:
            return False
        method, target = request.start[0], request.start[1]
        version = request.start[2] if len(request.start) > 2 else "HTTP/1.0"
        keep_alive = version == "HTTP/1.1" and "close" not in request.values("connection")
        request_has_body = request.chunked() or request.content_length() is not None
        try:
            upstream_reader, upstream_writer = await _bounded(asyncio.open_connection(HOST, self.upstream_port))
        except (OSError, asyncio.TimeoutError):
            await _copy_body(request, reader, None, request_has_body)
            await self._answer_bad_gateway(writer, keep_alive)
            return keep_alive
        try:
            headers = [*request.end_to_end(), ("Connection", "close")]
            if request.chunked():
                headers.append(("Transfer-Encoding", "chunked"))
            upstream_writer.write(_encode_head(f"{method} {target} HTTP/1.1", headers))
            await _copy_body(request, reader, upstream_writer, request_has_body)
            await _bounded(upstream_writer.drain())
            self.requests += 1
            answer = await _read_head(upstream_reader, ANSWER_SECONDS)
            if answer is None:
                raise BadMessage("the server closed without an answer")
            await self._forward_answer(method, answer, upstream_reader, writer, keep_alive)
        finally:
            upstream_writer.close()
        return keep_alive

    async def _forward_answer(
        self,
        method: str,
        answer: _Head,
        upstream_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> None:
        status_text = answer.start[1]
        if not status_text.isdigit():
            raise BadMessage(f"bad status {status_text!r}")
        has_body = _answer_has_body(method, int(status_text))
        chunked = answer.chunked()
        headers = answer.end_to_end()
        until_closed = has_body and not chunked and answer.content_length() is None
        if chunked or until_closed:
            headers.append(("Transfer-Encoding", "chunked"))
        if not keep_alive:
            headers.append(("Connection", "close"))
        writer.write(_encode_head(" ".join(["HTTP/1.1", *answer.start[1:]]), headers))
        if until_closed:
            await _copy_until_closed_as_chunks(upstream_reader, writer)
        else:
            await _copy_body(answer, upstream_reader, writer, has_body)
        await _bounded(writer.drain())

    async def _answer_bad_gateway(self, writer: asyncio.StreamWriter, keep_alive: bool) -> None:
        # What an edge answers when the server behind it refuses: 502, with a body that says so.
        body = f"the server on port {self.upstream_port} did not accept a connection".encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        if not keep_alive:
            headers.append(("Connection", "close"))
        writer.write(_encode_head("HTTP/1.1 502 Bad Gateway", headers) + body)
        await _bounded(writer.drain())


class FrontEndProcess(ChildServer):
    """`FrontEnd` in a child process, for benchmarks: `with FrontEndProcess(port) as front_end:` then `url`.

    TLS takes a certificate and key file (a context cannot cross processes); `counters()` reads the counters.
    """

    def __init__(
        self,
        upstream_port: int,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        max_seconds: float = 900.0,
    ) -> None:
        arguments = [str(upstream_port), "--max-seconds", str(max_seconds)]
        if certfile is not None:
            arguments += ["--certfile", certfile]
        if keyfile is not None:
            arguments += ["--keyfile", keyfile]
        super().__init__("testkit.front_end", arguments, scheme="https" if certfile is not None else "http")

    def counters(self) -> dict[str, int]:
        """The front end's counters now: connections and requests."""
        answer: dict[str, int] = json.loads(self.command("counters"))
        return answer


def main() -> None:
    """`python -m testkit.front_end UPSTREAM_PORT [--certfile F [--keyfile F]] [--max-seconds S]`."""
    parser = argparse.ArgumentParser(description="A keep-alive HTTP/1.1 front end (testkit/front_end.py).")
    parser.add_argument("upstream_port", type=int, help="port of the server on 127.0.0.1")
    parser.add_argument("--certfile", help="PEM certificate chain: serve TLS to clients")
    parser.add_argument("--keyfile", help="PEM private key of the certificate (if not in --certfile)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    arguments = parser.parse_args()
    context: Optional[ssl.SSLContext] = None
    if arguments.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(arguments.certfile, arguments.keyfile)
    elif arguments.keyfile:
        parser.error("--keyfile goes with --certfile")

    def answer(line: str) -> str:
        if line != "counters":
            raise ValueError(f"unknown command {line!r}")
        return json.dumps({"connections": front_end.connections, "requests": front_end.requests})

    with FrontEnd(arguments.upstream_port, context) as front_end:
        serve_commands(front_end.port, answer, arguments.max_seconds)


if __name__ == "__main__":
    main()
