"""The base of the testkit servers that run in the calling process: a port on 127.0.0.1 served by an asyncio loop in a
thread of its own, connections it can cut, and a `close()` that ends them all and joins the thread, each with a bound.
"""

import asyncio
import concurrent.futures
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Optional, TypeVar

from typing_extensions import Self

HOST = "127.0.0.1"
# Upper bound for a call to take effect on the loop, for connections to end when cut, and for joining the thread.
LOOP_SECONDS = 10.0

_T = TypeVar("_T")


class LoopServer:
    """Serves `serve_connection` for each connection to `port`, on a loop in a thread named `thread_name`.

    Subclasses implement `serve_connection`, and run their verbs on the loop with `on_loop`. Use a subclass as a
    context manager, or call `close()`. `ssl_context` (a server context) makes the port TLS, and `url` https. `port`
    defaults to a free one; `listener`, a socket bound already (not listening yet), is served instead of either.
    """

    def __init__(
        self,
        thread_name: str,
        ssl_context: Optional[ssl.SSLContext] = None,
        port: int = 0,
        listener: Optional[socket.socket] = None,
        **server_options: Any,
    ) -> None:
        if listener is not None:
            listener.listen()
            self._listener = listener
        else:
            self._listener = socket.create_server((HOST, port))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"{'https' if ssl_context is not None else 'http'}://{HOST}:{self.port}"
        self._closed = False
        self._server: Optional[asyncio.Server] = None
        # The connections being served, by the task serving each.
        self._serving: dict["asyncio.Task[Any]", asyncio.StreamWriter] = {}
        # Every connection accepted and not yet closed, from the moment it is accepted: one whose task has not started
        # when the server closes is in no `_serving`, and would be left open (and reported unclosed when collected).
        self._accepted: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started: "concurrent.futures.Future[None]" = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started, ssl_context, server_options), name=thread_name, daemon=True
        )
        self._thread.start()
        started.result(LOOP_SECONDS)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it ends; cancelled by `cut_connections()` and `close()`."""
        raise NotImplementedError

    def on_loop(self, action: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        """Run `action(*args)` on the server's loop and return its result, waiting at most LOOP_SECONDS."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        return asyncio.run_coroutine_threadsafe(action(*args), self._loop).result(LOOP_SECONDS)

    async def cut_connections(self) -> None:
        """On the loop: close every connection being served, and wait (bounded) until each has ended."""
        # Closing the connection too, not only cancelling its task: on Python 3.11 and older, wait_for can swallow a
        # cancellation that arrives as the awaited step finishes, and the task would then wait for more.
        for task, writer in self._serving.items():
            # Aborted, not closed: a cut ends the connection at once, also a TLS one whose peer never answers its
            # close_notify (the graceful close would wait for it).
            writer.transport.abort()
            task.cancel()
        for writer in self._accepted:  # also those whose task has not started yet
            writer.transport.abort()
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=LOOP_SECONDS)

    def close(self) -> None:
        """Stop accepting, close every connection and join the thread, each with a bound; twice is fine."""
        if self._closed:
            return
        try:
            self.on_loop(self._shut_down)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(LOOP_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def _run(
        self,
        started: "concurrent.futures.Future[None]",
        ssl_context: Optional[ssl.SSLContext],
        server_options: dict[str, Any],
    ) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._on_connection, sock=self._listener, ssl=ssl_context, **server_options)
            )
            started.set_result(None)
            self._loop.run_forever()
            # Whatever close() could not end within its bound ends here, so that the loop closes with no task pending.
            left = asyncio.all_tasks(self._loop)
            for task in left:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            for writer in self._accepted:
                writer.transport.abort()
            self._abort_untracked()
            self._loop.run_until_complete(asyncio.sleep(0))  # their connection_lost callbacks
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
            raise
        finally:
            self._listener.close()
            self._loop.close()
            # A connection accepted just as the server closes gets a transport whose registration with the closed
            # server fails half-way; it is left to the garbage collector, whose call of Server._wakeup then fails on
            # Python 3.13.0 (it may run only once there) in whatever test runs at that moment. The loop is closed:
            # there is nothing left to wake.
            if self._server is not None:
                setattr(self._server, "_wakeup", lambda: None)  # noqa: B010 - shadows a private method of asyncio's

    async def _shut_down(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_untracked()
        await self.cut_connections()

    def _abort_untracked(self) -> None:
        # Every connection asyncio accepted for the server, also one that never reached `_on_connection`. Left open,
        # such a connection would be closed by the garbage collector, where Python 3.13.0's Server._wakeup can fail
        # (it runs once per collected connection, and fails the second time): a test then fails at random.
        if sys.version_info >= (3, 13) and self._server is not None:
            self._server.abort_clients()

    def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[Any, Any, None]:
        self._accepted.add(writer)
        return self._accept(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        # asyncio turns Nagle's algorithm off only on sockets whose protocol number is TCP's, and a socket accepted
        # from socket.create_server() has 0. Left on, it holds each small write of an answer (a head, then a chunk)
        # until the client acknowledges the last one, which a client on a kept-alive connection delays by up to 40 ms.
        accepted: Optional[socket.socket] = writer.get_extra_info("socket")
        if accepted is not None:
            accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._serving[task] = writer
        try:
            await self.serve_connection(reader, writer)
        except asyncio.CancelledError:
            # cut_connections() or close(). Ending cancelled would make asyncio's stream callback log a traceback (it
            # asks the cancelled task for its exception), so the connection just ends here.
            pass
        finally:
            self._serving.pop(task, None)
            # Closed politely, a connection stays open until what is left in its buffer is sent: for ever, to a
            # client that reads no more. It stays in `_accepted` until it is closed, so that nothing outlives close().
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), LOOP_SECONDS)
            except BaseException:  # noqa: BLE001 - the connection ends either way: cancelled (close()), reset, or stuck
                writer.transport.abort()
            self._accepted.discard(writer)
