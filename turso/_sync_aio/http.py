"""PLACEHOLDER for development of the core: the real module comes from the issue-24-http branch."""

import asyncio
import weakref
from typing import Any, Awaitable, Callable, Optional, Sequence

import aiohttp


class TransportError(Exception):
    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class TransportClosed(TransportError):
    pass


_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]]" = weakref.WeakKeyDictionary()


class RemoteHttp:
    def __init__(self, user_agent: str, timeout: Callable[[], float]) -> None:
        self._user_agent = user_agent
        self._timeout = timeout
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        entry = _sessions.get(loop)
        if entry is None or entry[0].closed:
            entry = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=15)), 0]
            _sessions[loop] = entry
        if self._loop is None:
            self._loop = loop
            entry[1] += 1
        return entry[0]

    async def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Sequence[tuple[str, str]],
        *,
        base_url: Optional[str],
        token: Optional[str],
        url: Optional[str] = None,
        extra_wait: float = 0.0,
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], Awaitable[None]],
    ) -> None:
        if self._closed:
            raise TransportClosed("the sync connection is closing: no request is made any more")
        base = base_url or url
        if not base:
            raise TransportError("no remote URL")
        if base.startswith("libsql://"):
            base = "https://" + base[len("libsql://") :]
        full = base.rstrip("/") + "/" + path.lstrip("/")
        all_headers = dict(headers)
        if token is not None:
            all_headers.setdefault("Authorization", f"Bearer {token}")
        all_headers.setdefault("User-Agent", self._user_agent)
        timeout = self._timeout()
        session = self._session()
        task = asyncio.ensure_future(
            self._exchange(session, method, full, body, all_headers, timeout, extra_wait, on_status, on_chunk)
        )
        self._tasks.add(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._closed and task.cancelled():
                raise TransportClosed("the sync connection is closing") from None
            task.cancel()
            raise
        finally:
            self._tasks.discard(task)

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        full: str,
        body: Optional[bytes],
        headers: dict[str, str],
        timeout: float,
        extra_wait: float,
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], Awaitable[None]],
    ) -> None:
        try:
            async with session.request(
                method,
                full,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout + extra_wait),
            ) as response:
                on_status(response.status)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    await on_chunk(chunk)
        except asyncio.TimeoutError as error:
            raise TransportError(f"no answer from {full} within {timeout:g} s", timed_out=True) from error
        except aiohttp.ClientError as error:
            raise TransportError(f"{type(error).__name__}: {error}") from error

    def abort(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    def close_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(self.close()))
        except RuntimeError:
            pass

    async def close(self) -> None:
        self._closed = True
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        entry = _sessions.get(loop)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _sessions[loop]
            await entry[0].close()
