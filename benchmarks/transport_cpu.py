"""CPU per sync request on loopback: our transport (turso/_sync_aio/transport.py) against urllib.request.urlopen,
which the driver's HTTP uses (a new connection, and for https a new default TLS context, on every request).

    python -m benchmarks.transport_cpu            # about half a minute
    python -m benchmarks.transport_cpu --smoke    # a few requests each, to prove it runs

Each round sends the same POST (a /v2/pipeline body of 84 bytes) once through each client, interleaved, in one
process; the client thread's CPU (`time.thread_time`, so the loopback servers' threads are not counted) and the wall
time of each request are recorded, and the medians printed. Three remotes: a keep-alive HTTP server and a keep-alive
TLS server (testkit, threads in this process; its test CA in SSL_CERT_FILE, so urllib's per-request TLS context is
cheap there), and the real `tursodb --sync-server`, which closes every connection. The cost of a TLS context with the
system's trust store, which urllib pays on every https request to a real remote, is printed separately.
"""

import argparse
import json
import os
import ssl
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from testkit.http_servers import HttpServer
from testkit.sync_server import SyncServer
from testkit.tls import LoopbackCertificates
from turso._sync_aio.transport import SyncTransport

BODY = json.dumps({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}).encode()
HEADERS = [("Content-Type", "application/json")]
WARMUP_ROUNDS = 20


def constant(value: str) -> Callable[[], str]:
    return lambda: value


def ours(transport: SyncTransport) -> Callable[[], bytes]:
    def send() -> bytes:
        chunks: list[bytes] = []
        transport.request("POST", "/v2/pipeline", BODY, HEADERS, on_status=lambda status: None, on_chunk=chunks.append)
        return b"".join(chunks)

    return send


def urllib_request(url: str) -> Callable[[], bytes]:
    def send() -> bytes:
        request = urllib.request.Request(f"{url}/v2/pipeline", data=BODY, method="POST", headers=dict(HEADERS))
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: bytes = response.read()
            return answer

    return send


def measure(clients: dict[str, Callable[[], bytes]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median CPU and wall milliseconds per request of each client, the clients interleaved round by round."""
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    wall: dict[str, list[float]] = {name: [] for name in clients}
    for round_number in range(WARMUP_ROUNDS + rounds):
        for name, send in clients.items():
            cpu_before, wall_before = time.thread_time(), time.perf_counter()
            send()
            if round_number >= WARMUP_ROUNDS:
                cpu[name].append((time.thread_time() - cpu_before) * 1000)
                wall[name].append((time.perf_counter() - wall_before) * 1000)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in clients}


def report(remote: str, results: dict[str, tuple[float, float]], transport: SyncTransport) -> None:
    (ours_cpu, ours_wall), (urllib_cpu, urllib_wall) = results["ours"], results["urllib"]
    print(
        f"{remote:<28} ours {ours_cpu:7.3f} ms CPU {ours_wall:7.3f} ms wall | urllib {urllib_cpu:7.3f} ms CPU "
        f"{urllib_wall:7.3f} ms wall | CPU ratio {ours_cpu / urllib_cpu:5.2f} | ours opened "
        f"{transport.connections_opened} connections for {transport.requests_sent} requests"
    )


def default_context_cpu_ms(times: int) -> float:
    """Median CPU of one ssl.create_default_context() with the system's trust store (no SSL_CERT_FILE)."""
    spent: list[float] = []
    for _ in range(times):
        before = time.thread_time()
        ssl.create_default_context()
        spent.append((time.thread_time() - before) * 1000)
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few requests each, to prove it runs")
    arguments = parser.parse_args()
    rounds = 5 if arguments.smoke else 500
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(name, None)
    trust_store_ms = default_context_cpu_ms(5 if arguments.smoke else 30)
    with tempfile.TemporaryDirectory() as folder:
        certificates = LoopbackCertificates()
        os.environ["SSL_CERT_FILE"] = str(certificates.write_ca(Path(folder) / "ca.pem"))
        with HttpServer() as plain, HttpServer(tls=certificates.server_context()) as tls, SyncServer() as tursodb:
            for remote, url, rounds_here in (
                ("keep-alive HTTP", plain.url, rounds),
                ("keep-alive HTTPS", tls.url, max(5, rounds // 5)),
                ("tursodb (Connection: close)", tursodb.url, max(5, rounds // 2)),
            ):
                transport = SyncTransport(constant(url), constant("token"), "benchmark", lambda: 10.0)
                try:
                    results = measure({"ours": ours(transport), "urllib": urllib_request(url)}, rounds_here)
                finally:
                    transport.close()
                report(remote, results, transport)
    print(
        f"ssl.create_default_context() with the system trust store: {trust_store_ms:.3f} ms CPU (urllib pays it on "
        "every https request; ours once per process and SSL_CERT_FILE / SSL_CERT_DIR)"
    )


if __name__ == "__main__":
    main()
