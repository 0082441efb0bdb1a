"""Event-loop responsiveness while a replica bootstraps a large remote database and while it pulls many new rows.

A heartbeat task sleeps 1 ms at a time and records how late each wake-up is (actual minus expected sleep). It runs
while a replica is opened from a freshly filled remote database (the bootstrap downloads the whole file), and then
while that replica pulls several MB of rows inserted on the remote after it opened. Each round uses a new sync server
and new files for each implementation, in a different order every round. The blocking driver is included as a
reference: called on the loop, it holds the loop for the whole operation.
"""

import asyncio
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, TypeVar, cast

import turso.lib_sync
from benchmarks.common import (
    ASYNC_CONNECTS,
    BLOCKING,
    OURS,
    PYTURSO,
    AsyncReplica,
    Settings,
    connect_blocking,
    fill_remote,
    p99,
    remote_size,
    rotated,
)
from testkit.sync_server import SyncServer

_T = TypeVar("_T")

IMPLEMENTATIONS = [OURS, PYTURSO, BLOCKING]
BOOTSTRAP = "bootstrap"
PULL = "pull"
IDLE = "idle"
# The heartbeat's sleep.
INTERVAL = 0.001
# No phase of this benchmark takes this long; the heartbeat stops by itself after it.
HEARTBEAT_LIMIT_SECONDS = 120.0


@dataclass
class LatenessResult:
    """How late the heartbeat woke up while one implementation ran one phase, over all rounds."""

    implementation: str
    # "bootstrap" (opening a replica of the large remote), "pull" (the large pull) or "idle" (nothing running).
    phase: str
    # Size of the remote database at the start of each round (bootstrap phase only).
    remote_bytes: list[int]
    # Bytes the replica received from the remote in each round (the database, or the new rows).
    received_bytes: list[int]
    # How long the phase took in each round.
    durations_s: list[float]
    # Wake-ups measured, over all rounds.
    samples: int
    max_ms: float
    p99_ms: float
    median_ms: float
    # The largest lateness of each round, and when (after the phase began) that wake-up was due.
    round_max_ms: list[float]
    round_max_at_ms: list[float]
    # Every wake-up's lateness (for the chart).
    lateness_ms: list[float]


class Heartbeat:
    """A task that sleeps `INTERVAL` at a time and records each wake-up's end time and lateness."""

    def __init__(self) -> None:
        # (when the wake-up happened, how late it was), in perf_counter seconds.
        self.beats: list[tuple[float, float]] = []
        self._stopped = False
        self._task: "asyncio.Task[None] | None" = None

    async def _run(self) -> None:
        deadline = time.perf_counter() + HEARTBEAT_LIMIT_SECONDS
        while not self._stopped and time.perf_counter() < deadline:
            start = time.perf_counter()
            await asyncio.sleep(INTERVAL)
            end = time.perf_counter()
            self.beats.append((end, end - start - INTERVAL))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        # Let it take a few beats first, so that it is in its steady state when the work starts.
        await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            await self._task

    def since(self, start: float) -> "Phase":
        """The wake-ups after `start` (when the phase began)."""
        beats = [(end, lateness) for end, lateness in self.beats if end > start]
        worst_end, worst = max(beats, key=lambda beat: beat[1])
        return Phase([lateness for _, lateness in beats], worst_end - worst - start, 0.0)


@dataclass
class Phase:
    """What the heartbeat saw while one action ran."""

    # Every wake-up's lateness, in seconds.
    lateness: list[float]
    # When the wake-up that was latest was due, in seconds after the action started.
    worst_at: float
    # How long the action took, in seconds.
    duration: float


async def lateness_during(action: Callable[[], Awaitable[_T]]) -> tuple[_T, Phase]:
    """Run `action` with a heartbeat beside it; return its result and what the heartbeat saw."""
    heartbeat = Heartbeat()
    await heartbeat.start()
    try:
        start = time.perf_counter()
        result = await action()
        duration = time.perf_counter() - start
    finally:
        await heartbeat.stop()
    phase = heartbeat.since(start)
    phase.duration = duration
    return result, phase


def _received_bytes(stats: object) -> int:
    received = getattr(stats, "network_received_bytes")
    assert isinstance(received, int)
    return received


@dataclass
class _AsyncReplica:
    connection: AsyncReplica

    async def pull(self) -> bool:
        return await self.connection.pull()

    async def received_bytes(self) -> int:
        return _received_bytes(await self.connection.stats())

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class _BlockingReplica:
    # Called on the event loop, which waits for every call.
    connection: turso.lib_sync.ConnectionSync

    async def pull(self) -> bool:
        return self.connection.pull()

    async def received_bytes(self) -> int:
        stats = cast(object, self.connection.stats())  # pyright: ignore[reportUnknownMemberType]  # native stats
        return _received_bytes(stats)

    async def close(self) -> None:
        self.connection.close()


async def _open(name: str, path: str, url: str) -> "_AsyncReplica | _BlockingReplica":
    if name == BLOCKING:
        return _BlockingReplica(connect_blocking(path, url))
    return _AsyncReplica(await ASYNC_CONNECTS[name](path, url))


@dataclass
class _Samples:
    lateness: list[float]
    durations: list[float]
    received: list[int]
    round_max: list[float]
    round_max_at: list[float]
    remote: list[int]


async def _one_round(
    name: str, settings: Settings, folder: Path, samples: dict[tuple[str, str], _Samples]
) -> None:
    folder.mkdir()
    try:
        with SyncServer(folder / "remote.db") as server:
            fill_remote(server, "big", settings.bootstrap_bytes)
            samples[name, BOOTSTRAP].remote.append(remote_size(server))
            path = str(folder / "replica.db")
            replica, phase = await lateness_during(lambda: _open(name, path, server.url))
            try:
                before = await replica.received_bytes()
                _record(samples[name, BOOTSTRAP], phase, before)
                fill_remote(server, "fresh", settings.pull_bytes)
                pulled, phase = await lateness_during(replica.pull)
                if not pulled:
                    raise RuntimeError(f"{name}: the large pull found nothing new")
                _record(samples[name, PULL], phase, await replica.received_bytes() - before)
            finally:
                await replica.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record(samples: _Samples, phase: Phase, received: int) -> None:
    samples.lateness.extend(phase.lateness)
    samples.durations.append(phase.duration)
    samples.received.append(received)
    samples.round_max.append(max(phase.lateness))
    samples.round_max_at.append(phase.worst_at)


async def measure_responsiveness(settings: Settings, workdir: Path) -> list[LatenessResult]:
    """Heartbeat lateness during the bootstrap and the large pull, per implementation, over all rounds."""
    samples: dict[tuple[str, str], _Samples] = {
        (name, phase): _Samples([], [], [], [], [], []) for name in IMPLEMENTATIONS for phase in (BOOTSTRAP, PULL)
    }
    # The heartbeat's own floor: the loop doing nothing else.
    _, idle = await lateness_during(lambda: asyncio.sleep(0.3))
    samples["none", IDLE] = _Samples(
        idle.lateness, [idle.duration], [0], [max(idle.lateness)], [idle.worst_at], []
    )
    for turn in range(settings.responsiveness_rounds):
        for name in rotated(IMPLEMENTATIONS, turn):
            await _one_round(name, settings, workdir / f"round{turn}-{name}", samples)
    return [
        LatenessResult(
            implementation=name,
            phase=phase,
            remote_bytes=found.remote,
            received_bytes=found.received,
            durations_s=[round(value, 4) for value in found.durations],
            samples=len(found.lateness),
            max_ms=round(max(found.lateness) * 1e3, 3),
            p99_ms=round(p99(found.lateness) * 1e3, 3),
            median_ms=round(statistics.median(found.lateness) * 1e3, 3),
            round_max_ms=[round(value * 1e3, 3) for value in found.round_max],
            round_max_at_ms=[round(value * 1e3, 1) for value in found.round_max_at],
            lateness_ms=[round(value * 1e3, 3) for value in found.lateness],
        )
        for (name, phase), found in samples.items()
    ]

