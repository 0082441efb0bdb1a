"""A loopback TCP proxy that adds latency: every byte from a client reaches the server a fixed delay later.

It stands in for a remote database far away. Each chunk a client sends is forwarded `delay` seconds after it
arrived (in order, pipelined, like a network link with that one-way latency); the server's answers go back at once.
The driver opens one HTTP connection per request, so every request (pull, push, bootstrap) pays the delay once.

It runs as its own process (`python -m benchmarks.proxy UPSTREAM_PORT --delay-ms 50`), so that forwarding bytes
never competes with the benchmark for the interpreter lock; `DelayProxy` starts and stops that process. The process
prints the port it listens on, then serves on 127.0.0.1 until it is terminated, its parent goes away (standard input
closes) or `--max-seconds` pass.

It can also play a remote that stopped answering: the line "hold" on its standard input holds every client byte not
yet forwarded, and every later one (connections are still accepted: a request then waits for an answer forever);
"release" forwards them again, held bytes first. Each command is acknowledged with a line on standard output once it
is in effect (`DelayProxy.hold()` and `DelayProxy.release()`).
"""

import argparse
import asyncio
import subprocess
import sys
import threading
from types import TracebackType
from typing import Optional

DESCRIPTION = "A loopback TCP proxy that delays every client-to-server byte by a fixed time."
HOST = "127.0.0.1"
CHUNK_SIZE = 64 * 1024
# A connection that has not finished after this long is dropped (the benchmark's requests take well under a second).
CONNECTION_TIMEOUT_SECONDS = 60.0


async def _forward_delayed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, flowing: asyncio.Event
) -> None:
    # Client to server: each chunk (and the end of the stream) leaves `delay` seconds after it arrived, in order, and
    # only while `flowing` is set (cleared: the remote is stalled).
    loop = asyncio.get_running_loop()
    # Each item: when it is due, and the chunk (b"" for the end of the stream).
    in_flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send_when_due() -> None:
        while True:
            due, chunk = await in_flight.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await flowing.wait()
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send_when_due())
    try:
        while True:
            chunk = await reader.read(CHUNK_SIZE)
            in_flight.put_nowait((loop.time() + delay, chunk))
            if not chunk:
                break
        await sender
    finally:
        sender.cancel()


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Server to client: at once.
    while chunk := await reader.read(CHUNK_SIZE):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except OSError:
        pass


async def _serve_connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_port: int,
    delay: float,
    flowing: asyncio.Event,
) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, upstream_port)
    except OSError:
        _close(client_writer)
        return
    directions = [
        asyncio.create_task(_forward_delayed(client_reader, upstream_writer, delay, flowing)),
        asyncio.create_task(_forward(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(directions, timeout=CONNECTION_TIMEOUT_SECONDS)
    finally:
        for direction in directions:
            direction.cancel()
        # Collects their errors too (a reset connection is no news for a proxy).
        await asyncio.gather(*directions, return_exceptions=True)
        _close(upstream_writer)
        _close(client_writer)


def _command(line: bytes, flowing: asyncio.Event) -> None:
    # One line from the parent: "hold" or "release", acknowledged on standard output once in effect.
    if line.strip() == b"hold":
        flowing.clear()
        print("held", flush=True)
    elif line.strip() == b"release":
        flowing.set()
        print("released", flush=True)


async def serve(upstream_port: int, delay: float, max_seconds: float) -> None:
    """Listen on a free port of 127.0.0.1, print it, and forward to `upstream_port` until stopped."""
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    # Cleared while the remote plays stalled ("hold"), set again by "release".
    flowing = asyncio.Event()
    flowing.set()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    def watch_parent() -> None:
        # Commands, one a line; standard input closes when the parent process goes away (or closes it to stop us).
        for line in sys.stdin.buffer:
            loop.call_soon_threadsafe(_command, line, flowing)
        loop.call_soon_threadsafe(stop)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_connection(reader, writer, upstream_port, delay, flowing)
        except asyncio.CancelledError:
            # Shutting down. Ending cancelled would make asyncio's stream callback log a traceback (it calls
            # task.exception() on the cancelled task), so the connection just ends here.
            pass

    server = await asyncio.start_server(on_connection, HOST, 0)
    port: int = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    threading.Thread(target=watch_parent, name="proxy-parent-watch", daemon=True).start()
    async with server:
        try:
            await asyncio.wait_for(stopped, max_seconds)
        except asyncio.TimeoutError:
            pass


class DelayProxy:
    """The proxy process, as a context manager: `url` is the proxied address of the sync server."""

    def __init__(self, upstream_port: int, delay: float, max_seconds: float = 900.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.max_seconds = max_seconds
        self.url = ""
        self._process: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        """Start the proxy process and wait until it listens."""
        command = [
            sys.executable,
            "-m",
            "benchmarks.proxy",
            str(self.upstream_port),
            "--delay-ms",
            str(self.delay * 1000),
            "--max-seconds",
            str(self.max_seconds),
        ]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the delay proxy did not start (it printed {line!r})")
        self.url = f"http://{HOST}:{int(line)}"

    def hold(self) -> None:
        """Play a stalled remote: from now on no client byte reaches the server (connections are still accepted)."""
        self._command("hold", "held")

    def release(self) -> None:
        """End `hold()`: held bytes go on to the server (their delay already spent), and so do later ones."""
        self._command("release", "released")

    def _command(self, command: str, acknowledgement: str) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the delay proxy is not running")
        process.stdin.write(command.encode() + b"\n")
        process.stdin.flush()
        answer = process.stdout.readline().strip().decode()
        if answer != acknowledgement:
            raise RuntimeError(f"the delay proxy answered {answer!r} to {command!r}")

    def stop(self) -> None:
        """Stop the proxy process."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> "DelayProxy":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("upstream_port", type=int, help="port of the server on 127.0.0.1")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="delay added to client-to-server bytes")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    arguments = parser.parse_args()
    upstream_port: int = arguments.upstream_port
    delay_ms: float = arguments.delay_ms
    max_seconds: float = arguments.max_seconds
    asyncio.run(serve(upstream_port, delay_ms / 1000, max_seconds))


if __name__ == "__main__":
    main()
