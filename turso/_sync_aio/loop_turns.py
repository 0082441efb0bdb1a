"""Turns that bound how many of one kind of step run at once on an event loop (opens, background rounds, applies)."""

import asyncio
import weakref


class LoopTurns:
    """An asyncio.Semaphore of `size` per event loop, made on the loop's first use: module-level limits of ours are
    per loop, since a semaphore belongs to the loop that first waits on it."""

    __slots__ = ("size", "_by_loop")

    def __init__(self, size: int) -> None:
        """Turns of `size` at once, on every loop."""
        self.size = size
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> asyncio.Semaphore:
        """The running loop's semaphore: `async with turns():` waits for a turn."""
        loop = asyncio.get_running_loop()
        semaphore = self._by_loop.get(loop)
        if semaphore is None:
            semaphore = self._by_loop[loop] = asyncio.Semaphore(self.size)
        return semaphore
