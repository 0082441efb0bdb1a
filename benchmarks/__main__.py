"""`make bench`: run every benchmark against a local sync server; write the tables, results.json, chart.png and
local_sql.png (local SQL while syncing).

    python -m benchmarks            # the full run (about four minutes); prints PASS/FAIL against the targets
    python -m benchmarks --smoke    # a tiny run (seconds) into benchmarks/results/smoke/; checks no target
    python -m benchmarks --workdir /dev/shm   # replicas and remotes in another folder (default: the temp folder)

The replicas' folder matters: the driver syncs the database file to disk in native code that holds the interpreter
lock, so the event loop's longest stalls during a bootstrap or a large pull follow the disk's fsync time.

Both exit 0 when the benchmark ran, whatever the verdicts; a failure to run exits non-zero.
"""

import argparse
import asyncio
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.background import measure_background
from benchmarks.chart import write_chart, write_local_sql_chart
from benchmarks.common import FULL, SMOKE, Settings, describe_ours, filesystem_of, machine
from benchmarks.concurrency import measure_concurrency
from benchmarks.footprint import measure_footprint
from benchmarks.local_sql_while_syncing import measure_local_sql
from benchmarks.overhead import measure_overhead, ours_over_pyturso
from benchmarks.queries import measure_queries, query_ratios
from benchmarks.report import (
    Results,
    background_targets,
    check_targets,
    describe_implementations,
    settings_dict,
    tables,
    write_json,
)
from benchmarks.responsiveness import measure_responsiveness

DESCRIPTION = "Benchmarks of turso.lib_sync_aio against a local sync server."


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run(settings: Settings, workdir: Path) -> Results:
    ours_module = describe_ours()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    names = ("overhead", "queries", "responsiveness", "concurrency", "footprint", "local_sql", "background")
    folders = {name: workdir / name for name in names}
    for folder in folders.values():
        folder.mkdir()
    _progress("1/7 per-call overhead ...")
    overhead = await measure_overhead(settings, folders["overhead"])
    _progress(f"2/7 local queries ... ({time.perf_counter() - start:.0f} s)")
    queries = await measure_queries(settings, folders["queries"])
    _progress(f"3/7 loop responsiveness ... ({time.perf_counter() - start:.0f} s)")
    responsiveness = await measure_responsiveness(settings, folders["responsiveness"])
    _progress(f"4/7 concurrency through the delay proxy ... ({time.perf_counter() - start:.0f} s)")
    concurrency, speedups = await measure_concurrency(settings, folders["concurrency"])
    _progress(f"5/7 footprint ... ({time.perf_counter() - start:.0f} s)")
    footprint = measure_footprint(settings.footprint_counts, folders["footprint"])
    _progress(f"6/7 local SQL while syncing, through the delay proxy ... ({time.perf_counter() - start:.0f} s)")
    local_sql, local_sql_notes = await measure_local_sql(settings, folders["local_sql"])
    _progress(f"7/7 background sync of many replicas ... ({time.perf_counter() - start:.0f} s)")
    background = await measure_background(settings.smoke, folders["background"])
    return Results(
        machine=machine(),
        ours=ours_module,
        workdir=f"{workdir.parent} ({filesystem_of(workdir)})",
        smoke=settings.smoke,
        started=started,
        duration_s=round(time.perf_counter() - start, 1),
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
        background=background,
        targets=check_targets(settings.smoke, overhead, queries, responsiveness, speedups, local_sql, local_sql_notes)
        + background_targets(settings.smoke, background),
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
    _progress("turso-sync-aio benchmarks" + (" (smoke)" if smoke else "") + "; implementations:")
    _progress(describe_implementations())
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-bench-", dir=parent) as workdir:
        results = asyncio.run(_run(settings, Path(workdir)))
    json_path = settings.results_dir / "results.json"
    chart_path = settings.results_dir / "chart.png"
    local_sql_chart_path = settings.results_dir / "local_sql.png"
    write_json(results, json_path)
    write_chart(results, chart_path)
    write_local_sql_chart(results, local_sql_chart_path)
    print(tables(results))
    print()
    print(f"Wrote {json_path}, {chart_path} and {local_sql_chart_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
