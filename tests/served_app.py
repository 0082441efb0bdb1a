"""An example app under uvicorn in a subprocess, for the service tests (this is not a test module): start it, wait
until it answers, SIGTERM it and time its exit, and print what the clients saw as a latency table."""

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from testkit.sync_server import free_port
from tests.helpers import CHECKOUT

EXAMPLES = CHECKOUT / "examples"
# Bounds on waiting for the app (start-up imports FastAPI: about a second here).
START_SECONDS = 20.0


class ServedApp:
    """`uvicorn --app-dir examples MODULE:app` on a free port, in `workdir`, with `env` added to this environment (and
    TURSO_AUTH_TOKEN removed: the local servers take none); its stderr goes to a file."""

    def __init__(self, module: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = workdir / f"uvicorn-{self.port}.log"
        environment = dict(os.environ)
        environment.update(env)
        environment.pop("TURSO_AUTH_TOKEN", None)
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), f"{module}:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_healthy(self, client: httpx.AsyncClient, timeout: float = START_SECONDS) -> None:
        """Wait until GET /health answers 200 (the test fails if the app exits or does not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"the app exited with {self.process.returncode}:\n{self.stderr()}"
            try:
                if (await client.get(f"{self.url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the app was not healthy within {timeout} s:\n{self.stderr()}"
            await asyncio.sleep(0.05)

    def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited (killed after 10 s: the assertion then fails)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - began

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def latency_table(
    title: str,
    phases: Sequence[str],
    latencies: Mapping[str, Sequence[float]],
    statuses: Mapping[str, Mapping[int, int]],
) -> str:
    """A Markdown table: per phase, the requests, their p50, p99 and max latency, and the count of each status."""
    lines = [f"| phase ({title}) | requests | p50 ms | p99 ms | max ms | statuses |", "|---|---|---|---|---|---|"]
    for phase in phases:
        values = sorted(latencies.get(phase, ()))
        if not values:
            continue
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        counts = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.get(phase, {}).items()))
        lines.append(
            f"| {phase} | {len(values)} | {statistics.median(values) * 1000:.1f} | {p99 * 1000:.1f} | "
            f"{values[-1] * 1000:.1f} | {counts} |"
        )
    return "\n".join(lines)
