"""CPU per sync request on loopback: the HTTP layer on the event loop (turso/_sync_aio/http.py, aiohttp) against
urllib.request.urlopen, which the driver's HTTP uses (a new connection, and for https a new default TLS context, on
every request). The blocking transport of our own that aiohttp replaced was measured beside them before it was
deleted (commit e48fed9; benchmarks/README.md has the figures).

    python -m benchmarks.transport_cpu            # about a minute
    python -m benchmarks.transport_cpu --smoke    # a few requests each, to prove it runs

Everything runs on one thread, in one event loop: each round sends the same POST (a /v2/pipeline body of 84 bytes)
once through each client, interleaved, the order rotating every round; the blocking client is called straight from
the loop's thread (they block it while they run, which costs nothing here). The thread's CPU (`time.thread_time`, so
the loopback servers' threads are not counted, while the loop's own work for an aiohttp request is) and the wall time
of each request are recorded, and the medians printed. Three remotes: a keep-alive HTTP server and a keep-alive TLS
server (testkit, threads in this process; its test CA in SSL_CERT_FILE, so urllib's per-request TLS context is cheap
there), and the real `tursodb --sync-server`, which closes every connection. The cost of a TLS context with the
system's trust store, which urllib pays on every https request to a real remote, is printed separately.
"""

import argparse
import asyncio
import json
import os
import ssl
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from testkit.http_servers import HttpServer
from testkit.sync_server import SyncServer
from testkit.tls import LoopbackCertificates
from turso._sync_aio.http import RemoteHttp

BODY = json.dumps({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}).encode()
HEADERS = [("Content-Type", "application/json")]
WARMUP_ROUNDS = 20
TOKEN = "token"

Send = Callable[[], Awaitable[bytes]]


def on_the_loop(http: RemoteHttp, url: str) -> Send:
    """One request through the new layer, as the engine will make it: awaited on the loop, base URL and token given."""

    async def send() -> bytes:
        chunks: list[bytes] = []

        async def on_chunk(chunk: bytes) -> None:
            chunks.append(chunk)

        await http.request(
            "POST", "/v2/pipeline", BODY, HEADERS, base_url=url, token=TOKEN, on_status=ignore, on_chunk=on_chunk
        )
        return b"".join(chunks)

    return send


def urllib_request(url: str) -> Send:
    async def send() -> bytes:
        request = urllib.request.Request(f"{url}/v2/pipeline", data=BODY, method="POST", headers=dict(HEADERS))
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: bytes = response.read()
            return answer

    return send


def ignore(status: int) -> None:
    pass


async def measure(clients: dict[str, Send], rounds: int) -> dict[str, tuple[float, float]]:
    """Median CPU and wall milliseconds per request of each client, the clients interleaved round by round (the
    order rotating, so that none always goes first)."""
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    wall: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    for round_number in range(WARMUP_ROUNDS + rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            send = clients[name]
            cpu_before, wall_before = time.thread_time(), time.perf_counter()
            await send()
            if round_number >= WARMUP_ROUNDS:
                cpu[name].append((time.thread_time() - cpu_before) * 1000)
                wall[name].append((time.perf_counter() - wall_before) * 1000)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in clients}


def report(remote: str, results: dict[str, tuple[float, float]], http: RemoteHttp) -> None:
    cells = " | ".join(f"{name} {cpu:6.3f} ms CPU {wall:6.3f} ms wall" for name, (cpu, wall) in results.items())
    ratio = results["aiohttp"][0] / results["urllib"][0]
    print(
        f"{remote:<28} {cells} | CPU aiohttp / urllib {ratio:4.2f} | connections opened for requests sent: "
        f"aiohttp {http.connections_opened}/{http.requests_sent}"
    )


def default_context_cpu_ms(times: int) -> float:
    """Median CPU of one ssl.create_default_context() with the system's trust store (no SSL_CERT_FILE)."""
    spent: list[float] = []
    for _ in range(times):
        before = time.thread_time()
        ssl.create_default_context()
        spent.append((time.thread_time() - before) * 1000)
    return statistics.median(spent)


async def compare(url: str, rounds: int, remote: str) -> None:
    http = RemoteHttp("benchmark", lambda: 10.0)
    try:
        clients = {"aiohttp": on_the_loop(http, url), "urllib": urllib_request(url)}
        results = await measure(clients, rounds)
    finally:
        await http.close()
    report(remote, results, http)


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        certificates = LoopbackCertificates()
        os.environ["SSL_CERT_FILE"] = str(certificates.write_ca(Path(folder) / "ca.pem"))
        with HttpServer() as plain, HttpServer(tls=certificates.server_context()) as tls, SyncServer() as tursodb:
            await compare(plain.url, rounds, "keep-alive HTTP")
            await compare(tls.url, max(5, rounds // 2), "keep-alive HTTPS")
            await compare(tursodb.url, max(5, rounds // 2), "tursodb (Connection: close)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few requests each, to prove it runs")
    arguments = parser.parse_args()
    rounds = 5 if arguments.smoke else 1000
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(name, None)
    trust_store_ms = default_context_cpu_ms(5 if arguments.smoke else 30)
    asyncio.run(run(rounds))
    print(
        f"ssl.create_default_context() with the system trust store: {trust_store_ms:.3f} ms CPU (urllib pays it on "
        "every https request; aiohttp once per process and SSL_CERT_FILE / SSL_CERT_DIR)"
    )


if __name__ == "__main__":
    main()
