"""`make bench`: run every benchmark against local sync servers; write the tables, results.json, the charts and the
results page (benchmarks/results/RESULTS.md).

    python -m benchmarks            # the full run (about 18 minutes); every target met or missed
    python -m benchmarks --smoke    # a tiny run (under a minute) into benchmarks/results/smoke/; checks no target
    python -m benchmarks --workdir /dev/shm   # replicas and remotes in another folder (default: the temp folder)

The replicas' folder matters: the driver syncs the database file to disk in native code that holds the interpreter
lock, so the event loop's longest stalls during a bootstrap or a large pull follow the disk's fsync time.

The background benchmark also runs on the module before our transport when `make bench-before` has set up its
worktree (benchmarks/before.py): route by route, taking turns with ours. Without the worktree (CI), the figures of
benchmarks/results/before.json are shown instead, with that run's own date and commit.

Both exit 0 when the benchmark ran, whatever the verdicts; a failure to run exits non-zero.
"""

import argparse
import asyncio
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks import before
from benchmarks.background import ROUTE_ARGUMENTS, ROUTES, TLS, BackgroundRecord, BackgroundResult, measure_background
from benchmarks.chart import write_chart, write_local_sql_chart, write_sync_chart, write_tenants_chart
from benchmarks.common import (
    FULL,
    RESULTS_DIR,
    SMOKE,
    Settings,
    TestCertificates,
    describe_module,
    filesystem_of,
    load_average,
    machine,
    rotated,
    trust_test_ca,
)
from benchmarks.concurrency import measure_concurrency
from benchmarks.footprint import measure_footprint
from benchmarks.half_open import measure_half_open
from benchmarks.local_sql_while_syncing import measure_local_sql
from benchmarks.overhead import measure_overhead, ours_over_pyturso
from benchmarks.queries import measure_queries, query_ratios
from benchmarks.report import (
    Results,
    background_targets,
    check_targets,
    describe_implementations,
    half_open_targets,
    round_trip_targets,
    settings_dict,
    tables,
    tenants_targets,
    write_json,
    write_page,
)
from benchmarks.responsiveness import measure_responsiveness
from benchmarks.round_trips import measure_round_trips, round_trips_per_call
from benchmarks.round_trips import ours_over_pyturso as round_trip_ratios
from benchmarks.tenant_pool import measure_pool
from benchmarks.tenants import TENANTS_FULL, TENANTS_SMOKE, measure_tenants, settings_record

DESCRIPTION = "Benchmarks of turso.lib_sync_aio against local sync servers."
# The record of the background benchmark on the module before our transport (benchmarks/before.py).
BEFORE_RECORD = RESULTS_DIR / "before.json"
STEPS = 12


def _progress(step: int, message: str, start: float) -> None:
    print(f"{step}/{STEPS} {message} ... ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


def _recorded_before() -> Optional[BackgroundRecord]:
    if not BEFORE_RECORD.is_file():
        return None
    return BackgroundRecord.from_json(json.loads(BEFORE_RECORD.read_text(encoding="utf-8")))


async def _background(
    settings: Settings, workdir: Path, certificates: TestCertificates
) -> tuple[list[BackgroundResult], Optional[BackgroundRecord], bool]:
    """Ours on each route; with the before module's worktree set up, its run of each route right beside ours (the
    order alternating). Returns ours, the before module's record, and whether that record is from this run."""
    interleaved = before.is_ready()
    if interleaved:
        before.copy_code()
    ours: list[BackgroundResult] = []
    records: list[BackgroundRecord] = []
    names = {route: name for name, route in ROUTE_ARGUMENTS.items()}
    for turn, route in enumerate(ROUTES):
        for side in rotated(["ours", "before"], turn):
            folder = workdir / f"{side}-{names[route]}"
            folder.mkdir()
            if side == "ours":
                tls = certificates if route == TLS else None
                ours.append(await measure_background(settings.smoke, folder, certificates=tls))
            elif interleaved:
                records.append(before.measure(folder / "record.json", (names[route],), settings.smoke))
    if not records:
        return ours, _recorded_before(), False
    merged = BackgroundRecord(
        module=records[0].module,
        machine=records[0].machine,
        started=records[0].started,
        load_average_start=records[0].load_average_start,
        load_average_end=records[-1].load_average_end,
        results=sorted((result for record in records for result in record.results),
                       key=lambda result: ROUTES.index(result.route)),
    )
    return ours, merged, True


async def _run(settings: Settings, workdir: Path) -> Results:
    # Before any TLS context is made in this process: our transport caches one per SSL_CERT_FILE, urllib reads it
    # per request.
    certificates = trust_test_ca(workdir)
    module = describe_module()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    start = time.perf_counter()
    names = ("overhead", "queries", "responsiveness", "concurrency", "footprint", "local_sql", "round_trips",
             "background", "half_open", "tenants", "tenant_pool")
    folders = {name: workdir / name for name in names}
    for folder in folders.values():
        folder.mkdir()
    _progress(1, "per-call overhead", start)
    overhead = await measure_overhead(settings, folders["overhead"])
    _progress(2, "local queries", start)
    queries = await measure_queries(settings, folders["queries"])
    _progress(3, "loop responsiveness", start)
    responsiveness = await measure_responsiveness(settings, folders["responsiveness"])
    _progress(4, "concurrency through the delay proxy", start)
    concurrency, speedups = await measure_concurrency(settings, folders["concurrency"])
    _progress(5, "footprint", start)
    footprint = measure_footprint(settings.footprint_counts, folders["footprint"])
    _progress(6, "local SQL while syncing, through the delay proxy", start)
    local_sql, local_sql_notes = await measure_local_sql(settings, folders["local_sql"])
    _progress(7, "pull and push over a far link with TLS and on loopback", start)
    round_trips = await measure_round_trips(settings, folders["round_trips"], certificates)
    _progress(8, "background sync of many replicas, plain loopback and TLS, ours and before", start)
    background, background_before, before_interleaved = await _background(
        settings, folders["background"], certificates
    )
    _progress(9, "a half-open link during background sync", start)
    half_open = await measure_half_open(settings, folders["half_open"])
    _progress(10, "a database per tenant: N replicas in one process, ours, pyturso's module and the JS binding", start)
    tenants = await measure_tenants(settings.smoke, folders["tenants"])
    _progress(11, "a replica pool for a database per tenant", start)
    tenant_pool = await measure_pool(settings.smoke, folders["tenant_pool"])
    _progress(12, "writing the results", start)
    ratios = round_trip_ratios(round_trips)
    return Results(
        machine=machine(),
        module=module,
        workdir=f"{workdir.parent} ({filesystem_of(workdir)})",
        smoke=settings.smoke,
        started=started,
        duration_s=round(time.perf_counter() - start, 1),
        load_average_start=load_start,
        load_average_end=load_average(),
        settings=settings_dict(settings),
        overhead=overhead,
        overhead_ours_over_pyturso={key: round(value, 4) for key, value in ours_over_pyturso(overhead).items()},
        queries=queries,
        queries_ratios={key: round(value, 4) for key, value in query_ratios(queries).items()},
        responsiveness=responsiveness,
        concurrency=concurrency,
        speedups=speedups,
        footprint=footprint,
        local_sql=local_sql,
        local_sql_notes=local_sql_notes,
        round_trips=round_trips,
        round_trip_ratios={key: round(value, 4) for key, value in ratios.items()},
        round_trips_per_call={
            key: round(value, 3) for key, value in round_trips_per_call(round_trips, settings.wan_round_trip).items()
        },
        background=background,
        background_before=background_before,
        background_before_interleaved=before_interleaved,
        half_open=half_open,
        tenants=tenants,
        tenants_settings=settings_record(TENANTS_SMOKE if settings.smoke else TENANTS_FULL),
        tenant_pool=tenant_pool,
        targets=check_targets(settings.smoke, overhead, queries, responsiveness, speedups, local_sql, local_sql_notes)
        + round_trip_targets(settings.smoke, round_trips, ratios)
        + background_targets(settings.smoke, background)
        + half_open_targets(settings.smoke, half_open)
        + tenants_targets(settings.smoke, tenants),
    )


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the benchmark still works")
    parser.add_argument("--workdir", type=Path, default=None, help="where the replicas and remotes go (default: temp)")
    arguments = parser.parse_args(argv)
    smoke: bool = arguments.smoke
    parent: Optional[Path] = arguments.workdir
    settings = SMOKE if smoke else FULL
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    print("turso-sync-aio benchmarks" + (" (smoke)" if smoke else "") + "; implementations:", file=sys.stderr)
    print(describe_implementations(), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-bench-", dir=parent) as workdir:
        results = asyncio.run(_run(settings, Path(workdir)))
    folder = settings.results_dir
    write_json(results, folder / "results.json")
    write_chart(results, folder / "chart.png")
    write_local_sql_chart(results, folder / "local_sql.png")
    write_sync_chart(results, folder / "sync.png")
    write_tenants_chart(results, folder / "tenants.png")
    write_page(results, folder / "RESULTS.md")
    print(tables(results))
    print()
    print(f"Wrote results.json, chart.png, local_sql.png, sync.png, tenants.png and RESULTS.md in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
