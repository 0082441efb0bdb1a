"""The benchmark's outputs: every target checked, the tables (on stdout and in the results page), results.json.

`write_page` writes benchmarks/results/RESULTS.md from one run's `Results` alone: the run's module, machine and load,
the verdict on every target in the same words ("met" or "missed"), the tables, and the charts. Nothing in it is
written by hand; the method is in benchmarks/README.md.
"""

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks.background import (
    LATENESS_P99_LIMIT_MS,
    PLAIN,
    THREADS_PER_REPLICA_LIMIT,
    TLS,
    BackgroundRecord,
    BackgroundResult,
)
from benchmarks.common import (
    BLOCKING,
    DESCRIPTIONS,
    JS,
    MB,
    OURS,
    PYTURSO,
    THREADS,
    Machine,
    ModuleRecord,
    Settings,
)
from benchmarks.concurrency import ConcurrencyResult, Speedup
from benchmarks.footprint import FootprintRow
from benchmarks.half_open import HalfOpenResult
from benchmarks.local_sql_while_syncing import (
    KINDS,
    SCENARIO_LABELS,
    SCENARIOS,
    STALL_TIMEOUT_SECONDS,
    SYNCING,
    LocalSqlResult,
    SyncNotes,
    js_version,
)
from benchmarks.overhead import NOT_PINNED, OTHER_CORE, SAME_CORE, OverheadResult, ours_over_pyturso
from benchmarks.queries import (
    AIOSQLITE,
    EXECUTE_FETCHALL,
    INSERT_COMMIT,
    ONE_CORE,
    QUERY,
    SELECT_100,
    TURSO_AIO,
    QueryResult,
    query_ratios,
)
from benchmarks.responsiveness import BOOTSTRAP, IDLE, PULL, LatenessResult
from benchmarks.round_trips import FAR, LOOPBACK, NEAR, OPERATIONS, ROUTES, RoundTripResult, round_trip_of
from benchmarks.tenant_pool import PoolResult
from benchmarks.tenant_workload import Summary
from benchmarks.tenants import ACTIVE as TENANTS_ACTIVE
from benchmarks.tenants import (
    ACTIVE_LATENESS_P99_LIMIT_MS,
    ACTIVE_WRITE_P99_LIMIT_MS,
    IDLE_CPU_LIMIT_S,
    IDLE_LATENESS_MAX_LIMIT_MS,
    IDLE_LATENESS_P99_LIMIT_MS,
    RSS_PER_REPLICA_LIMIT_MIB,
    THREADS_LIMIT,
    TenantsResult,
)
from benchmarks.tenants import IDLE as TENANTS_IDLE

# The targets: our median per call at most this many times pyturso's module's (stats and the local queries; pull and
# push, whose 10-20 ms are the HTTP round trip, at most the looser limit); execute_fetchall at most this fraction of
# execute + fetchall; our largest loop lateness during the bootstrap of the large database below this (ms); at least
# these speedups over sequential blocking pulls.
OVERHEAD_RATIO_LIMIT = 1.00
NETWORK_RATIO_LIMIT = 1.10
EXECUTE_FETCHALL_LIMIT = 0.50
BOOTSTRAP_LATENESS_LIMIT_MS = 15.0
SPEEDUP_TARGETS = {8: 5.0, 32: 15.0}
# Local SQL while syncing (ours): p99 of reads and of writes at most this (ms) in every scenario; the max below the
# JS binding's; no error and nothing blocked.
LOCAL_SQL_P99_LIMIT_MS = 5.0
# Pull and push of one row (issue 17): ours at most this many times pyturso's module's median over the far link with
# TLS (one round trip per request plus the server's time), and on plain loopback.
FAR_RATIO_LIMIT = 0.45
LOOPBACK_RATIO_LIMIT = 1.02
# The words of every verdict.
MET = "met"
MISSED = "missed"
NOT_CHECKED = "not checked (smoke run)"

COLORS = {
    OURS: "#1f77b4",
    PYTURSO: "#ff7f0e",
    BLOCKING: "#7f7f7f",
    THREADS: "#9467bd",
    "none": "#2ca02c",
    TURSO_AIO: "#8c564b",
    AIOSQLITE: "#17becf",
    JS: "#2ca02c",
}
LABELS = {
    OURS: "ours",
    PYTURSO: "pyturso's lib_sync_aio",
    TURSO_AIO: "turso.aio, local file",
    AIOSQLITE: "aiosqlite, local file",
    BLOCKING: "blocking driver",
    THREADS: "blocking driver, N threads",
    "none": "idle loop (floor)",
    JS: "JS sync binding",
}


@dataclass
class TargetCheck:
    """One target, what this run measured, and the verdict: MET, MISSED, or NOT_CHECKED in a smoke run."""

    short: str
    target: str
    measured: str
    verdict: str


def verdict(smoke: bool, passed: bool) -> str:
    """The words for a target's verdict in this run."""
    return NOT_CHECKED if smoke else (MET if passed else MISSED)


@dataclass
class Results:
    """Everything one run measured (written to results.json)."""

    machine: Machine
    # The module measured: its files' digests and the commit they are at.
    module: ModuleRecord
    # Where the replicas and the remotes' files were, and on what filesystem.
    workdir: str
    smoke: bool
    started: str
    duration_s: float
    # The machine's load average (1, 5, 15 minutes) when the run started and when it ended.
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float]
    settings: dict[str, Any]
    overhead: list[OverheadResult]
    # Our median time per call divided by pyturso's module's, per operation.
    overhead_ours_over_pyturso: dict[str, float]
    queries: list[QueryResult]
    # Ours over pyturso's module per "operation, placement"; and our execute_fetchall over our execute + fetchall.
    queries_ratios: dict[str, float]
    responsiveness: list[LatenessResult]
    concurrency: list[ConcurrencyResult]
    speedups: list[Speedup]
    footprint: list[FootprintRow]
    local_sql: list[LocalSqlResult]
    local_sql_notes: list[SyncNotes]
    # Pull and push of one row over a far link with TLS and on plain loopback (benchmarks/round_trips.py): every
    # (route, implementation, operation); ours over pyturso's module per "route, operation"; round trips per call
    # per "implementation, operation".
    round_trips: list[RoundTripResult]
    round_trip_ratios: dict[str, float]
    round_trips_per_call: dict[str, float]
    # Many replicas in background sync on one event loop (benchmarks/background.py), on each route; and the record
    # of the same benchmark on the module before our transport: taking turns with ours in this run (interleaved),
    # or else from benchmarks/results/before.json, if there is one.
    background: list[BackgroundResult]
    background_before: Optional[BackgroundRecord]
    background_before_interleaved: bool
    # A half-open link during background sync (benchmarks/half_open.py), per request_timeout.
    half_open: list[HalfOpenResult]
    # A database per tenant (benchmarks/tenants.py): every configuration and implementation, and the settings.
    tenants: list[TenantsResult]
    tenants_settings: dict[str, Any]
    # The replica pool's benchmark (benchmarks/tenant_pool.py); None while turso.lib_sync_aio has no ReplicaPool.
    tenant_pool: Optional[PoolResult]
    targets: list[TargetCheck]


def check_targets(
    smoke: bool,
    overhead: list[OverheadResult],
    queries: list[QueryResult],
    responsiveness: list[LatenessResult],
    speedups: list[Speedup],
    local_sql: list[LocalSqlResult],
    local_sql_notes: list[SyncNotes],
) -> list[TargetCheck]:
    """Compare this run with the targets; a smoke run reports the figures but checks nothing."""
    # (short name, the target in words, what was measured, whether it meets the target)
    checks: list[tuple[str, str, str, bool]] = []
    for key, ratio in ours_over_pyturso(overhead).items():
        operation, placement = key.split(", ")
        limit = OVERHEAD_RATIO_LIMIT if operation == "stats" else NETWORK_RATIO_LIMIT
        where = placement if placement == NOT_PINNED else f"worker on {placement}"
        checks.append(
            (f"{operation} ({placement})",
             f"{operation}(), {where}: our median per call <= {limit:.2f}x pyturso's",
             f"{ratio:.3f}x", ratio <= limit)
        )
    for key, ratio in query_ratios(queries).items():
        operation, placement = key.split(", ")
        if operation.startswith(EXECUTE_FETCHALL):
            checks.append(
                (f"execute_fetchall ({placement})",
                 f"execute_fetchall, {placement}: <= {EXECUTE_FETCHALL_LIMIT:.2f}x our execute + fetchall",
                 f"{ratio:.3f}x", ratio <= EXECUTE_FETCHALL_LIMIT)
            )
        else:
            checks.append(
                (f"{operation} ({placement})",
                 f"{QUERY_LABELS[operation]}, {placement}: our median per call <= {OVERHEAD_RATIO_LIMIT:.2f}x "
                 "pyturso's",
                 f"{ratio:.3f}x", ratio <= OVERHEAD_RATIO_LIMIT)
            )
    bootstrap = lateness_of(responsiveness, OURS, BOOTSTRAP)
    size_mb = max(bootstrap.remote_bytes) / MB
    checks.append(
        ("bootstrap lateness",
         f"loop lateness max < {BOOTSTRAP_LATENESS_LIMIT_MS:.0f} ms during the {size_mb:.0f} MiB bootstrap (ours)",
         f"{bootstrap.max_ms:.2f} ms", bootstrap.max_ms < BOOTSTRAP_LATENESS_LIMIT_MS)
    )
    for count, target in SPEEDUP_TARGETS.items():
        for speedup in speedups:
            if speedup.replicas == count and speedup.implementation == OURS:
                checks.append(
                    (f"speedup N={count}",
                     f"{count} replicas pull >= {target:.0f}x faster than {count} blocking pulls in turn (ours)",
                     f"{speedup.speedup:.2f}x", speedup.speedup >= target)
                )
    checks += local_sql_checks(local_sql, local_sql_notes)
    return [TargetCheck(short, target, measured, verdict(smoke, passed)) for short, target, measured, passed in checks]


def local_sql_of(results: list[LocalSqlResult], implementation: str, scenario: str, kind: str) -> LocalSqlResult:
    for result in results:
        if (result.implementation, result.scenario, result.kind) == (implementation, scenario, kind):
            return result
    raise KeyError((implementation, scenario, kind))


def format_ms(result: LocalSqlResult, value: float) -> str:
    """A latency in ms; the largest of a scenario with a blocked statement is only a lower bound."""
    if result.count == 0:
        return "no sample"
    if result.blocked and value >= result.bound_s * 1000 * 0.99:
        return f"> {result.bound_s * 1000:,.0f} (blocked)"
    return f"{value:,.2f}"


def local_sql_checks(results: list[LocalSqlResult], notes: list[SyncNotes]) -> list[tuple[str, str, str, bool]]:
    """Ours in every scenario: p99 <= 5 ms and max below the JS binding's, for reads and writes; no errors (of a
    statement, or of a pull or push), nothing blocked."""
    checks: list[tuple[str, str, str, bool]] = []
    for scenario in SYNCING:
        ours = {kind: local_sql_of(results, OURS, scenario, kind) for kind in KINDS}
        js = {kind: local_sql_of(results, JS, scenario, kind) for kind in KINDS}
        # A kind that never ran (the scenario ended before it got a turn) or was blocked cannot pass.
        ran = all(result.count > 0 and not result.blocked for result in ours.values())
        checks.append(
            (f"local SQL p99 ({scenario})",
             f"local reads and writes {SCENARIO_LABELS[scenario]}: p99 <= {LOCAL_SQL_P99_LIMIT_MS:.0f} ms (ours)",
             ", ".join(f"{kind} {format_ms(ours[kind], ours[kind].p99_ms)} ms" for kind in KINDS),
             ran and all(result.p99_ms <= LOCAL_SQL_P99_LIMIT_MS for result in ours.values()))
        )
        checks.append(
            (f"local SQL max ({scenario})",
             f"local reads and writes {SCENARIO_LABELS[scenario]}: max below the JS binding's (ours)",
             ", ".join(f"{kind} {format_ms(ours[kind], ours[kind].max_ms)} vs {format_ms(js[kind], js[kind].max_ms)} ms"
                       for kind in KINDS),
             ran and all(ours[kind].max_ms < js[kind].max_ms for kind in KINDS))
        )
    ours_all = [result for result in results if result.implementation == OURS and result.scenario in SYNCING]
    errors = sum(result.errors for result in ours_all)
    blocked = sum(result.blocked for result in ours_all)
    sync_errors = sum(len(found.sync_errors) for found in notes if found.implementation == OURS)
    checks.append(
        ("local SQL errors",
         "local SQL while syncing: no statement fails or is blocked, no pull or push fails (ours, every scenario)",
         f"{errors} statement errors, {blocked} blocked, {sync_errors} sync errors",
         errors == 0 and blocked == 0 and sync_errors == 0)
    )
    for found in notes:
        if found.implementation == OURS:
            checks.append(
                ("stalled remote",
                 f"stalled remote: wait_for(pull(), {STALL_TIMEOUT_SECONDS:g}) returns in < 1 s; next pull works; no "
                 "row lost or doubled (ours)",
                 f"{found.stalled_pull_returned_ms:,.0f} ms, next pull {found.next_pull}, rows {found.replica_rows} of "
                 f"{found.remote_rows}",
                 found.stalled_pull_timed_out and found.stalled_pull_returned_ms < 1000
                 and not found.next_pull.startswith("error") and found.replica_rows == found.remote_rows)
            )
    return checks


QUERY_LABELS = {
    QUERY: "execute + fetchall, 1 row",
    SELECT_100: "execute + fetchall, 100 rows",
    INSERT_COMMIT: "execute INSERT + commit",
    EXECUTE_FETCHALL: "execute_fetchall, 1 row",
}


def lateness_of(results: list[LatenessResult], implementation: str, phase: str) -> LatenessResult:
    for result in results:
        if result.implementation == implementation and result.phase == phase:
            return result
    raise KeyError((implementation, phase))


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *(line(row) for row in rows)]


def format_us(value: float) -> str:
    return f"{value / 1000:,.2f} ms" if value >= 1000 else f"{value:,.1f} µs"


def run_lines(results: Results) -> list[str]:
    """Which run this is: when, how long, on what machine and load, which module, where its files were."""
    module = results.module
    return [
        f"- Run: {results.started}, {results.duration_s:.0f} s" + (" (smoke run: no target checked)" if results.smoke
                                                                  else ""),
        f"- Load average (1, 5, 15 min): {_load(results.load_average_start)} at the start, "
        f"{_load(results.load_average_end)} at the end",
        f"- Machine: {results.machine.describe()}",
        f"- Module: {module.describe()} (commit {module.commit}; files: {', '.join(module.files)})",
        f"- Files of replicas and remotes in: {results.workdir}",
    ]


def _load(average: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in average)


def overhead_table(results: Results) -> list[str]:
    """Per-call overhead of stats(), pull() and push() with nothing to sync, per placement."""
    overhead = {(result.implementation, result.operation, result.placement): result for result in results.overhead}
    rounds = results.settings["overhead_rounds"]
    out = [
        f"Min / median over every call of {rounds} interleaved rounds; the worker thread pinned to the event loop's "
        "core or to another core, or neither thread pinned.",
        "",
    ]
    rows: list[list[str]] = []
    labels = {"stats": "stats()", "pull": "pull(), nothing new", "push": "push(), nothing to push"}
    for operation, label in labels.items():
        for placement in (SAME_CORE, OTHER_CORE, NOT_PINNED):
            if (OURS, operation, placement) not in overhead:
                continue
            row = [label, placement]
            for name in (OURS, PYTURSO, BLOCKING):
                found = overhead.get((name, operation, placement))
                row.append("" if found is None else f"{format_us(found.min_us)} / {format_us(found.median_us)}")
            row.append(f"{results.overhead_ours_over_pyturso[f'{operation}, {placement}']:.3f}x")
            rows.append(row)
    return out + _table(
        ["operation", "worker on", "ours", "pyturso module", "blocking, direct", "ours / pyturso (medians)"], rows
    )


def responsiveness_table(results: Results) -> list[str]:
    """Heartbeat lateness during a large bootstrap and a large pull."""
    bootstrap_bytes = max(lateness_of(results.responsiveness, OURS, BOOTSTRAP).remote_bytes) / MB
    pull_bytes = max(lateness_of(results.responsiveness, OURS, PULL).received_bytes) / MB
    out = [
        f"Lateness of a 1 ms heartbeat ({results.settings['responsiveness_rounds']} rounds; bootstrap of a "
        f"{bootstrap_bytes:.1f} MiB remote, pull of {pull_bytes:.1f} MiB of new rows).",
        "",
    ]
    rows: list[list[str]] = []
    for phase in (BOOTSTRAP, PULL):
        for name in (OURS, PYTURSO, BLOCKING):
            lateness = lateness_of(results.responsiveness, name, phase)
            rows.append(
                [phase, LABELS[name], f"{lateness.max_ms:.2f}", f"{statistics.median(lateness.round_max_ms):.2f}",
                 f"{lateness.p99_ms:.2f}", f"{lateness.median_ms:.2f}",
                 f"{statistics.median(lateness.durations_s) * 1000:.0f}", str(lateness.samples)]
            )
    idle = lateness_of(results.responsiveness, "none", IDLE)
    rows.append(["idle", LABELS["none"], f"{idle.max_ms:.2f}", f"{idle.max_ms:.2f}", f"{idle.p99_ms:.2f}",
                 f"{idle.median_ms:.2f}", f"{idle.durations_s[0] * 1000:.0f}", str(idle.samples)])
    return out + _table(
        ["phase", "implementation", "max ms", "median round max ms", "p99 ms", "median ms", "duration ms", "beats"],
        rows,
    )


def concurrency_table(results: Results) -> list[str]:
    """N replicas pulling at once through the delaying proxy, against N blocking pulls in turn."""
    delay_ms = results.settings["proxy_delay"] * 1000
    out = [
        f"N replicas pulling one new row each through a proxy adding {delay_ms:.0f} ms per request (wall time, median "
        f"of {results.settings['concurrency_rounds']} rounds).",
        "",
    ]
    walls = {(result.replicas, result.implementation): result for result in results.concurrency}
    speedups = {(speedup.replicas, speedup.implementation): speedup.speedup for speedup in results.speedups}
    rows: list[list[str]] = []
    for count in results.settings["replica_counts"]:
        rows.append(
            [str(count)]
            + [f"{walls[count, name].median_s * 1000:,.0f} ms" for name in (OURS, PYTURSO, BLOCKING, THREADS)]
            + [f"{speedups[count, name]:.2f}x" for name in (OURS, PYTURSO, THREADS)]
            + [f"{walls[count, OURS].cpu_ms_per_pull:.1f}"]
        )
    out += _table(
        ["N", "ours, gather", "pyturso, gather", "blocking, in turn", "blocking, N threads", "speedup ours",
         "speedup pyturso", "speedup threads", "CPU ms per pull (ours)"],
        rows,
    )
    if not all(result.all_pulled_new for result in results.concurrency):
        out += ["", "Some pulls found nothing new."]
    return out


def footprint_table(results: Results) -> list[str]:
    """OS threads and resident memory per open replica."""
    rows = [
        [str(row.replicas), str(row.threads), f"+{row.threads_added}", f"{row.rss_mib:.1f}",
         f"+{row.rss_added_mib:.1f}", f"{row.rss_per_replica_mib:.2f}"]
        for row in results.footprint
    ]
    return [
        "Our module, in a fresh process; RSS compared with no replica open.",
        "",
        *_table(["open replicas", "threads", "added", "RSS MiB", "added MiB", "MiB per replica"], rows),
    ]


def targets_table(results: Results) -> list[str]:
    """Every target of the run, what was measured, and the verdict, in the same words for all."""
    met = sum(1 for check in results.targets if check.verdict == MET)
    missed = sum(1 for check in results.targets if check.verdict == MISSED)
    summary = (f"{len(results.targets)} targets, none checked (smoke run)." if results.smoke
               else f"{len(results.targets)} targets: {met} met, {missed} missed.")
    return [
        summary,
        "",
        *_table(["target", "measured", "verdict"], [[c.target, c.measured, c.verdict] for c in results.targets]),
    ]


def sections(results: Results) -> list[tuple[str, list[str]]]:
    """The run as (heading, Markdown lines) sections, in the order of the page and of stdout."""
    return [
        ("Targets", targets_table(results)),
        ("Pull and push over a far link with TLS, and on plain loopback", round_trip_table(results)),
        ("Background sync of many replicas", background_table(results)),
        ("A half-open link during background sync", half_open_table(results)),
        ("A database per tenant: N replicas in background sync in one process", tenants_table(results)),
        ("A replica pool for a database per tenant", pool_table(results)),
        ("Per-call overhead", overhead_table(results)),
        ("Local queries", query_table(results)),
        ("Event-loop responsiveness", responsiveness_table(results)),
        ("Concurrency", concurrency_table(results)),
        ("Footprint", footprint_table(results)),
        ("Local SQL while syncing", local_sql_table(results)),
    ]


def tables(results: Results) -> str:
    """The run as text for stdout: which run it is, then each section's heading and tables."""
    out = run_lines(results)
    for heading, lines in sections(results):
        out += ["", heading, "", *lines]
    return "\n".join(out)


# The charts the page shows, by file name, with their captions.
CHARTS = {
    "sync.png": "Pull and push over a far link with TLS and on loopback, background sync on both routes and before "
                "our transport, and the half-open link",
    "chart.png": "Concurrency, per-call overhead, event-loop lateness, footprint, local queries, background sync",
    "local_sql.png": "Local SQL while syncing",
    "tenants.png": "A database per tenant: threads, time to open, loop lateness, CPU, memory and local writes of N "
                   "replicas in one process, against the JS binding and pyturso's module",
}


def write_page(results: Results, path: Path) -> None:
    """Write the results page (Markdown) for this run: every figure from `results`, none by hand."""
    out = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/report.py` from one run of "
        + ("`python -m benchmarks --smoke`" if results.smoke else "`make bench`")
        + " (`results.json` beside this page holds every figure of it); not edited by hand. What each benchmark "
        "measures, and how: [benchmarks/README.md](" + ("../../README.md" if results.smoke else "../README.md")
        + ").",
        "",
        *run_lines(results),
    ]
    for heading, lines in sections(results):
        out += ["", f"## {heading}", "", *lines]
    out += ["", "## Charts", ""]
    for name, caption in CHARTS.items():
        out += [f"{caption}:", "", f"![{caption}]({name})", ""]
    path.write_text("\n".join(out), encoding="utf-8")


def query_table(results: Results) -> list[str]:
    """The local queries as a Markdown table: median per call of each implementation, and the ratios."""
    medians = {(result.implementation, result.operation, result.placement): result.median_us
               for result in results.queries}
    out = [
        f"Median per call over every call of {results.settings['query_rounds']} interleaved rounds; one core = the "
        "loop and the worker thread on one CPU (as under taskset -c 0).",
        "",
    ]
    rows: list[list[str]] = []
    for operation in (QUERY, SELECT_100, INSERT_COMMIT, EXECUTE_FETCHALL):
        for placement in (ONE_CORE, NOT_PINNED):
            if (OURS, operation, placement) not in medians:
                continue
            row = [QUERY_LABELS[operation], placement]
            for name in (OURS, PYTURSO, TURSO_AIO, AIOSQLITE):
                found = medians.get((name, operation, placement))
                row.append("" if found is None else format_us(found))
            if operation == EXECUTE_FETCHALL:
                ratio = results.queries_ratios[f"{EXECUTE_FETCHALL} vs {QUERY}, {placement}"]
                row.append(f"{ratio:.3f}x our execute + fetchall")
            else:
                row.append(f"{results.queries_ratios[f'{operation}, {placement}']:.3f}x")
            rows.append(row)
    out += _table(
        ["operation", "placement", "ours", "pyturso module", "turso.aio (file)", "aiosqlite (file)",
         "ours / pyturso (medians)"],
        rows,
    )
    return out


def local_sql_table(results: Results) -> list[str]:
    """Local SQL while syncing as a Markdown table, and what each implementation's sync operations did."""
    settings = results.settings
    out = [
        f"Local SQL while syncing, through a proxy adding {settings['local_sql_delay'] * 1000:,.0f} ms per request: "
        "a reader (one-row SELECT) and a writer (INSERT + commit) side by side, each pausing 3 ms between "
        f"statements, during {settings['local_sql_rounds']} pulls and {settings['local_sql_rounds']} pushes per "
        f"implementation, for {settings['local_sql_window']:g} s after a pull abandoned after "
        f"{STALL_TIMEOUT_SECONDS:g} s on a stalled remote, and for {settings['local_sql_window']:g} s with no sync in "
        f"flight (reference). A statement still waiting after {settings['local_sql_bound']:g} s counts as blocked. "
        f"JS: @tursodatabase/sync {js_version()}.",
        "",
    ]
    rows: list[list[str]] = []
    for scenario in SCENARIOS:
        for kind in KINDS:
            for name in (OURS, PYTURSO, JS):
                found = local_sql_of(results.local_sql, name, scenario, kind)
                rows.append(
                    [SCENARIO_LABELS[scenario], kind, LABELS[name], format_ms(found, found.p50_ms),
                     format_ms(found, found.p99_ms), format_ms(found, found.max_ms), str(found.count),
                     str(found.errors) + (f" ({'; '.join(found.error_messages)})" if found.errors else ""),
                     str(found.blocked)]
                )
    out += _table(
        ["scenario", "statement", "implementation", "p50 ms", "p99 ms", "max ms", "count", "errors", "blocked"], rows
    )
    out.append("")
    for notes in results.local_sql_notes:
        stalled = (
            f"the stalled pull gave control back after {notes.stalled_pull_returned_ms:,.0f} ms"
            + ("" if notes.stalled_pull_timed_out else " (it did not time out)")
            + f" and its awaitable ended {notes.stalled_pull_after_release!r} once the remote answered; the next pull "
            f"returned {notes.next_pull}; rows pulled: {notes.replica_rows} in the replica, {notes.remote_rows} on "
            "the remote"
        )
        out.append(
            f"- {LABELS[notes.implementation]}: pulls returned {notes.pulled} in "
            f"{', '.join(f'{value:,.0f}' for value in notes.pull_ms)} ms, pushes took "
            f"{', '.join(f'{value:,.0f}' for value in notes.push_ms)} ms; {stalled}; {notes.closed}"
            + (f"; sync errors: {notes.sync_errors}" if notes.sync_errors else "")
            + (f"; the loop's exception handler heard {len(notes.loop_errors)}: {sorted(set(notes.loop_errors))}"
               if notes.loop_errors else "")
        )
    return out


def background_targets(smoke: bool, results: list[BackgroundResult]) -> list[TargetCheck]:
    """The background sync benchmark against its targets (issues 14 and 17), on each route; a smoke run checks
    nothing."""
    checks: list[tuple[str, str, str, bool]] = []
    for result in results:
        count, route = result.replicas, result.route
        missing = f", {result.missing_arrivals} never arrived" if result.missing_arrivals else ""
        checks += [
            (f"background lateness p99 ({route})",
             f"{count} replicas in background sync, {route}: loop lateness p99 < {LATENESS_P99_LIMIT_MS:.0f} ms",
             f"{result.lateness_p99_ms:.2f} ms", result.lateness_p99_ms < LATENESS_P99_LIMIT_MS),
            (f"threads per replica ({route})",
             f"{count} replicas in background sync, {route}: <= {THREADS_PER_REPLICA_LIMIT:.0f} threads per replica",
             f"{result.threads_per_replica:.2f}", result.threads_per_replica <= THREADS_PER_REPLICA_LIMIT),
            (f"propagation p99 ({route})",
             f"{count} replicas, {route}: propagation p99 < 2 x interval + server latency "
             f"({result.propagation_limit_ms:,.0f} ms)",
             f"{result.propagation_p99_ms:,.0f} ms{missing}",
             result.propagation_p99_ms < result.propagation_limit_ms and result.missing_arrivals == 0),
        ]
    return [TargetCheck(short, target, measured, verdict(smoke, passed)) for short, target, measured, passed in checks]


def round_trip_targets(smoke: bool, results: list[RoundTripResult], ratios: dict[str, float]) -> list[TargetCheck]:
    """Pull and push of one row (issue 17): ours against pyturso's module over the far link and on loopback; every
    pull must have fetched its row and every pushed row be on the remote once."""
    checks: list[TargetCheck] = []
    for route, limit in ((FAR, FAR_RATIO_LIMIT), (LOOPBACK, LOOPBACK_RATIO_LIMIT)):
        for operation in OPERATIONS:
            ours = round_trip_of(results, route, OURS, operation)
            theirs = round_trip_of(results, route, PYTURSO, operation)
            ratio = ratios[f"{route}, {operation}"]
            done = ours.all_done and theirs.all_done
            checks.append(TargetCheck(
                f"{operation} ({route})",
                f"{operation}() of one row, {route}: our median <= {limit:.2f}x pyturso's",
                f"{ratio:.3f}x ({ours.median_ms:,.1f} against {theirs.median_ms:,.1f} ms)"
                + ("" if done else "; some pull found nothing or a pushed row is missing or doubled"),
                verdict(smoke, ratio <= limit and done),
            ))
    return checks


def half_open_targets(smoke: bool, results: list[HalfOpenResult]) -> list[TargetCheck]:
    """A half-open link (issue 17): background sync recovers by itself, and nothing is lost or doubled."""
    checks: list[TargetCheck] = []
    for result in results:
        recovered = [value for value in result.recovery_s if value is not None]
        timeout = f"request_timeout {result.request_timeout_s:g} s" + (" (default)" if result.default_timeout else "")
        checks.append(TargetCheck(
            f"half-open link ({timeout})",
            f"half-open link, {timeout}: every replica's background sync succeeds again by itself once the link is "
            "back, and every row written meanwhile reaches the remote exactly once",
            f"{len(recovered)} of {len(result.recovery_s)} recovered, after "
            + (f"{statistics.median(recovered):.2f} s (median), {max(recovered):.2f} s (max)" if recovered else "-")
            + f"; rows once: {result.rows_once} of {result.rows_written}",
            verdict(smoke, len(recovered) == len(result.recovery_s) and result.rows_once == result.rows_written),
        ))
    return checks


def background_of(results: list[BackgroundResult], route: str) -> Optional[BackgroundResult]:
    """The result of one route, if measured."""
    for result in results:
        if result.route == route:
            return result
    return None


def _background_cells(result: BackgroundResult) -> list[str]:
    """One column of the background table: the figures of one route of one run."""
    per_100 = (
        "-" if result.front_end_connections is None or not result.front_end_requests
        else f"{result.front_end_connections * 100 / result.front_end_requests:,.1f} "
        f"({result.front_end_connections:,} for {result.front_end_requests:,} requests)"
    )
    return [
        f"{result.lateness_p50_ms:.2f} / {result.lateness_p99_ms:.2f} / {result.lateness_max_ms:.2f} ms",
        f"{result.idle_lateness_p99_ms:.2f} / {result.idle_lateness_max_ms:.2f} ms",
        f"{result.cpu_s_per_replica_hour:,.1f} s ({result.cpu_s_per_replica_hour_net:,.1f} s net)",
        f"{result.cpu_cores:.2f}",
        f"{result.threads_per_replica:.2f} ({result.threads_before} before, {result.threads_syncing} syncing)",
        f"{result.rounds_per_replica_s:.2f}; {result.replicas_with_failures} replicas had a round fail",
        f"{result.propagation_p50_ms:,.0f} / {result.propagation_p99_ms:,.0f} / {result.propagation_max_ms:,.0f} ms "
        f"({result.missing_arrivals} of {result.arrivals + result.missing_arrivals} missing)",
        f"{result.server_latency_ms:.1f} ms",
        per_100,
        f"{result.wal_bytes_max / 1024:,.0f} / {result.wal_bytes_median / 1024:,.0f} KiB",
    ]


BACKGROUND_MEASURES = [
    "loop lateness p50 / p99 / max (1 ms heartbeat)",
    "heartbeat alone: p99 / max",
    "CPU per replica per hour (net of the heartbeat)",
    "process CPU, cores",
    "threads per replica",
    "rounds per replica per second",
    "propagation p50 / p99 / max",
    "server latency (one idle round, one replica)",
    "client connections per 100 requests (front end)",
    "WAL per replica at the end: max / median",
]


def background_table(results: Results) -> list[str]:
    """The background sync benchmark on each route, and on the module before our transport when its record is
    there (with that run's own date, commit and module digest)."""
    columns = [(f"{result.route}", result) for result in results.background]
    before = results.background_before
    if before is not None:
        columns += [(f"{result.route}, before", result) for result in before.results]
    first = results.background[0]
    out = [
        f"{first.replicas} replicas, each in sync_in_background(interval={first.interval_s:g}), on one event loop, "
        f"measured for {first.duration_s:.0f} s after a warm-up; a row written every {first.write_every_s:g} s on a "
        f"different replica. Routes: {PLAIN} (HTTP to tursodb) and {TLS} (HTTPS to a keep-alive front end before "
        "tursodb).",
        "",
    ]
    if before is not None:
        when = (
            "in this run, in a child process from a worktree at that commit, each route right beside ours"
            if results.background_before_interleaved else f"in another run, {before.started}"
        )
        out += [
            f'"Before": the same benchmark code on the module before our transport, {when}; '
            f"{before.module.describe()} (commit {before.module.commit}); load average "
            f"{_load(before.load_average_start)} at its start and {_load(before.load_average_end)} at its end; "
            f"{before.machine.describe()}.",
            "",
        ]
    cells = [_background_cells(result) for _, result in columns]
    rows = [[measure, *(column[index] for column in cells)] for index, measure in enumerate(BACKGROUND_MEASURES)]
    return out + _table(["measure", *(name for name, _ in columns)], rows)


def round_trip_table(results: Results) -> list[str]:
    """Pull and push of one row on each route: medians, ratios, CPU, connections; then round trips per call."""
    settings = results.settings
    rtt_ms = settings["wan_round_trip"] * 1000
    out = [
        f"Pull of one new row and push of one row, each replica on a remote of its own. {FAR}: a proxy playing a "
        f"link of {rtt_ms:.0f} ms round trip (half of it each way per chunk, a whole one for a new connection) before "
        f"a keep-alive TLS front end before tursodb. {NEAR}: the same replicas and chain, the proxy set to 0. "
        f"{LOOPBACK}: tursodb directly, plain HTTP. {settings['round_trip_rounds']} rounds, the implementations "
        f"taking turns call by call ({settings['loopback_calls']} calls each per round on loopback, 1 on the others). "
        "Median (min) per call; CPU is this process's (every thread), median per call; connections are the client "
        "connections the front end accepted and the TCP connections our transport opened, per 100 calls.",
        "",
    ]
    rows: list[list[str]] = []
    for route in ROUTES:
        for operation in OPERATIONS:
            ours = round_trip_of(results.round_trips, route, OURS, operation)
            theirs = round_trip_of(results.round_trips, route, PYTURSO, operation)
            ratio = ours.median_ms / theirs.median_ms

            def count(value: Optional[float]) -> str:
                return "-" if value is None else f"{value:g}"

            rows.append([
                route, f"{operation}()",
                f"{ours.median_ms:,.1f} ({ours.min_ms:,.1f}) ms", f"{theirs.median_ms:,.1f} ({theirs.min_ms:,.1f}) ms",
                f"{ratio:.3f}x", f"{ours.cpu_ms:.2f} / {theirs.cpu_ms:.2f} ms",
                f"{count(ours.front_end_connections_per_100)} / {count(theirs.front_end_connections_per_100)}",
                count(ours.transport_connections_per_100),
            ])
    out += _table(
        ["route", "operation", "ours", "pyturso module", "ours / pyturso", "CPU per call, ours / pyturso",
         "front-end connections per 100, ours / pyturso", "our transport's connections per 100"],
        rows,
    )
    out += [
        "",
        f"Round trips each call waits for in turn: ({FAR} median - {NEAR} median) / {rtt_ms:.0f} ms.",
        "",
    ]
    per_call = results.round_trips_per_call
    out += _table(
        ["operation", "ours", "pyturso module"],
        [[f"{operation}()", f"{per_call[f'{OURS}, {operation}']:.2f}", f"{per_call[f'{PYTURSO}, {operation}']:.2f}"]
         for operation in OPERATIONS],
    )
    return out


def half_open_table(results: Results) -> list[str]:
    """Recovery from a half-open link, per request_timeout."""
    if not results.half_open:
        return ["Not measured."]
    first = results.half_open[0]
    out = [
        f"Replicas in sync_in_background(interval={first.interval_s:g}) behind a proxy and a keep-alive front end; "
        f"the proxy swallows new connections and freezes the open ones for {first.black_hole_s:g} s, then lets new "
        "connections through again. Recovery: from then until the end of the replica's first successful round "
        "(status.last_success_unix_time). Unhealthy: from the start of the black hole until status.healthy was "
        "first seen False.",
        "",
    ]

    def seconds(values: list[Optional[float]]) -> str:
        return ", ".join("never" if value is None else f"{value:.2f}" for value in values)

    rows: list[list[str]] = []
    for result in results.half_open:
        recovered = [value for value in result.recovery_s if value is not None]
        rows.append([
            f"{result.request_timeout_s:g} s" + (" (default)" if result.default_timeout else ""),
            seconds(result.recovery_s),
            f"{statistics.median(recovered):.2f} / {max(recovered):.2f} s" if recovered else "-",
            ", ".join(str(value) for value in result.failed_rounds),
            seconds(result.unhealthy_after_s),
            f"{result.rows_once} of {result.rows_written}",
        ])
    return out + _table(
        ["request_timeout", "recovery per replica, s", "recovery median / max", "failed rounds in a row",
         "unhealthy after, s", "rows on the remote exactly once"],
        rows,
    )


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(asdict(results), indent=1) + "\n", encoding="utf-8")


def describe_implementations() -> str:
    return "\n".join(f"  {name}: {description}" for name, description in DESCRIPTIONS.items())


def settings_dict(settings: Settings) -> dict[str, Any]:
    values = asdict(settings)
    values["results_dir"] = str(settings.results_dir)
    return values



def tenants_of(results: list[TenantsResult], load: str, replicas: int, implementation: str
               ) -> Optional[TenantsResult]:
    """The result of one implementation in one configuration, if measured."""
    for result in results:
        if (result.load, result.replicas, result.implementation) == (load, replicas, implementation):
            return result
    return None


def tenants_configurations(results: list[TenantsResult]) -> list[tuple[str, int]]:
    """(load, N) of every configuration measured, in the order run."""
    seen: list[tuple[str, int]] = []
    for result in results:
        if (result.load, result.replicas) not in seen:
            seen.append((result.load, result.replicas))
    return seen


def _largest(results: list[TenantsResult], load: str) -> int:
    counts = [result.replicas for result in results if result.load == load]
    return max(counts) if counts else 0


def tenants_targets(smoke: bool, results: list[TenantsResult]) -> list[TargetCheck]:
    """Ours against issue 24's targets: at the largest idle N (1,000 in the full run) and on the active load; a
    configuration that failed misses every target it is in."""
    checks: list[tuple[str, str, str, bool]] = []
    ours = [result for result in results if result.implementation == OURS]
    failed = [result for result in ours if result.error is not None]
    threads = [max(result.threads_max, result.all_at_once_threads_max or 0) for result in ours]
    checks.append((
        "tenants threads", f"a database per tenant: OS threads <= {THREADS_LIMIT} at any N (ours)",
        ", ".join(f"{result.load} {result.replicas:,}: {count:,}" for result, count in zip(ours, threads)),
        not failed and all(count <= THREADS_LIMIT for count in threads),
    ))
    checks.append((
        "tenants RSS per replica", f"a database per tenant: RSS per replica <= {RSS_PER_REPLICA_LIMIT_MIB} MiB (ours)",
        ", ".join(f"{result.load} {result.replicas:,}: {result.rss_per_replica_mib:.2f}" for result in ours),
        not failed and all(result.rss_per_replica_mib <= RSS_PER_REPLICA_LIMIT_MIB for result in ours),
    ))
    idle_count = _largest(results, TENANTS_IDLE)
    idle = tenants_of(results, TENANTS_IDLE, idle_count, OURS)
    js_idle = tenants_of(results, TENANTS_IDLE, idle_count, JS)
    active_count = _largest(results, TENANTS_ACTIVE)
    active = tenants_of(results, TENANTS_ACTIVE, active_count, OURS)
    usable = [found for found in (idle, js_idle, active) if found is not None and found.error is None]
    if idle is not None and js_idle is not None and idle in usable and js_idle in usable:
        concurrency = idle.open_concurrency
        checks.append((
            f"tenants open {idle_count:,}",
            f"a database per tenant: time to open {idle_count:,} ({concurrency} at a time) <= the JS binding's (ours)",
            f"{idle.open_s:,.1f} s against {js_idle.open_s:,.1f} s", idle.open_s <= js_idle.open_s,
        ))
        at_once = idle.all_at_once_lateness
        if at_once is not None and idle.all_at_once_open_s is not None:
            checks.append((
                f"tenants open {idle_count:,} at once",
                f"a database per tenant: {idle_count:,} connect_sync awaited at once: loop lateness p99 <= "
                f"{IDLE_LATENESS_P99_LIMIT_MS:g} ms and max <= {IDLE_LATENESS_MAX_LIMIT_MS:g} ms (ours)",
                f"p99 {at_once.p99_ms:,.1f} ms, max {at_once.max_ms:,.1f} ms; all open in "
                f"{idle.all_at_once_open_s:,.1f} s",
                at_once.p99_ms <= IDLE_LATENESS_P99_LIMIT_MS and at_once.max_ms <= IDLE_LATENESS_MAX_LIMIT_MS,
            ))
    if idle is not None:
        ok = idle.error is None
        checks.append((
            f"tenants idle {idle_count:,} lateness",
            f"{idle_count:,} idle replicas: loop lateness p99 <= {IDLE_LATENESS_P99_LIMIT_MS:g} ms and max <= "
            f"{IDLE_LATENESS_MAX_LIMIT_MS:g} ms (ours)",
            f"p99 {idle.lateness.p99_ms:,.1f} ms, max {idle.lateness.max_ms:,.1f} ms" if ok else "failed",
            ok and idle.lateness.p99_ms <= IDLE_LATENESS_P99_LIMIT_MS
            and idle.lateness.max_ms <= IDLE_LATENESS_MAX_LIMIT_MS,
        ))
        checks.append((
            f"tenants idle {idle_count:,} CPU",
            f"{idle_count:,} idle replicas: CPU per replica-hour <= {IDLE_CPU_LIMIT_S:g} s (ours)",
            f"{idle.cpu_s_per_replica_hour:,.2f} s" if ok else "failed",
            ok and idle.cpu_s_per_replica_hour <= IDLE_CPU_LIMIT_S,
        ))
    if active is not None:
        ok = active.error is None
        checks += [
            (f"tenants active {active_count:,} lateness",
             f"{active_count:,} active replicas: loop lateness p99 <= {ACTIVE_LATENESS_P99_LIMIT_MS:g} ms (ours)",
             f"{active.lateness.p99_ms:,.1f} ms" if ok else "failed",
             ok and active.lateness.p99_ms <= ACTIVE_LATENESS_P99_LIMIT_MS),
            (f"tenants active {active_count:,} writes",
             f"{active_count:,} active replicas: local write p99 <= {ACTIVE_WRITE_P99_LIMIT_MS:g} ms (ours)",
             f"{active.writes.p99_ms:,.1f} ms" if ok else "failed",
             ok and active.writes.p99_ms <= ACTIVE_WRITE_P99_LIMIT_MS and active.writes.count > 0),
            (f"tenants active {active_count:,} rows",
             f"{active_count:,} active replicas: every acknowledged write reaches its server; no write fails (ours)",
             f"{active.rows_found:,} of {active.rows_acknowledged:,} found, {active.write_errors} failed, "
             f"{active.writes_unfinished} unfinished" if ok else "failed",
             ok and active.rows_missing == 0 and active.write_errors == 0 and active.writes_unfinished == 0),
        ]
    return [TargetCheck(short, target, measured, verdict(smoke, passed)) for short, target, measured, passed in checks]


def _summary_cell(summary: Summary) -> str:
    return f"{summary.p50_ms:,.1f} / {summary.p99_ms:,.1f} / {summary.max_ms:,.1f}"


def _tenants_rows(result: TenantsResult) -> list[tuple[str, str]]:
    """(measure, cell) of one implementation in one configuration."""
    if result.error is not None:
        return [("failed", result.error)]
    rows = [
        ("OS threads: before opening / most seen / after close",
         f"{result.threads_before:,} / {result.threads_max:,} / {result.threads_after_close:,}"),
        ("RSS per replica (MiB)", f"{result.rss_per_replica_mib:.2f}"),
        (f"time to open all ({result.open_concurrency} at a time); loop lateness max meanwhile",
         f"{result.open_s:,.1f} s; {result.open_lateness.max_ms:,.0f} ms"),
        ("loop lateness p50 / p99 / max (ms, 10 ms ticker)", _summary_cell(result.lateness)),
        ("CPU per replica-hour (process CPU, cores)",
         f"{result.cpu_s_per_replica_hour:,.2f} s ({result.cpu_cores:.2f})"),
        ("rounds per replica in the window; replicas with a failed round",
         f"{result.rounds_per_replica:.1f}; {result.replicas_with_failures}"),
    ]
    if result.round_error_messages:
        rows.append(("errors of failed rounds", "; ".join(result.round_error_messages)))
    if result.load == TENANTS_ACTIVE:
        rows += [
            ("local write p50 / p99 / max (ms)", _summary_cell(result.writes)),
            ("acknowledged writes on the servers (failed, unfinished writes)",
             f"{result.rows_found:,} of {result.rows_acknowledged:,} after {result.rows_wait_s:.1f} s "
             f"({result.write_errors}, {result.writes_unfinished})"),
        ]
        if result.write_error_messages:
            rows.append(("errors of failed writes", "; ".join(result.write_error_messages)))
    rows.append(("close time (all at once)", f"{result.close_s:,.2f} s"))
    if result.all_at_once_open_s is not None and result.all_at_once_lateness is not None:
        rows += [
            ("opened all at once, fresh: time; loop lateness p50 / p99 / max (ms)",
             f"{result.all_at_once_open_s:,.1f} s; {_summary_cell(result.all_at_once_lateness)}"),
            ("opened all at once: OS threads; close time",
             f"{result.all_at_once_threads_max or 0:,}; {result.all_at_once_close_s or 0:,.2f} s"),
        ]
    return rows


def tenants_table(results: Results) -> list[str]:
    """The tenants benchmark of this run (`tenants_lines`)."""
    return tenants_lines(results.tenants, results.tenants_settings)


def tenants_lines(tenants: list[TenantsResult], settings: dict[str, Any]) -> list[str]:
    """Every configuration: one row per measure, one column per implementation (JS binding, pyturso's module,
    ours), as issue 24 laid it out."""
    if not tenants:
        return ["Not measured."]
    first = tenants[0]
    out = [
        f"N replicas, each its own file, over {first.servers} local sync servers, in one process per implementation, "
        f"each syncing every {first.interval_s:g} s (push, then pull): ours with sync_in_background, pyturso's "
        "module and the JS binding with a loop per replica. Idle: no writes; active: "
        f"{settings.get('write_rate', 0):g} writes a second (an INSERT in a transaction each) on random tenants. "
        f"Windows of {settings.get('idle_window', 0):g} s (idle) and {settings.get('active_window', 0):g} s (active) "
        f"after {settings.get('warm_up', 0):g} s of warm-up. Threads from /proc/PID/task (native ones count); CPU is "
        "the process's (every thread) over the window. JS: @tursodatabase/sync " + js_version() + ".",
        "",
    ]
    names = {JS: "JS binding", PYTURSO: "pyturso's module", OURS: "ours"}
    order = [JS, PYTURSO, OURS]
    rows: list[list[str]] = []
    for load, count in tenants_configurations(tenants):
        cells: dict[str, dict[str, str]] = {}
        measures: list[str] = []
        for name in order:
            found = tenants_of(tenants, load, count, name)
            for measure, cell in _tenants_rows(found) if found is not None else []:
                cells.setdefault(name, {})[measure] = cell
                if measure not in measures:
                    measures.append(measure)
        for measure in measures:
            rows.append([f"{count:,} {load}: {measure}", *(cells.get(name, {}).get(measure, "-") for name in order)])
    return out + _table(["measure", *(names[name] for name in order)], rows)


def pool_table(results: Results) -> list[str]:
    """The replica pool's benchmark, or why it did not run."""
    pool = results.tenant_pool
    if pool is None:
        return ["Not measured: turso.lib_sync_aio has no ReplicaPool yet (benchmarks/tenant_pool.py runs once it has)."]
    if pool.error is not None:
        return [f"Failed: {pool.error}"]
    rows = [
        ["requests (failed, unfinished)", f"{pool.requests.count:,} ({pool.errors}, {pool.unfinished})"],
        ["request p50 / p99 / max (ms), opens and evictions waited for included", _summary_cell(pool.requests)],
        ["writes p50 / p99 / max (ms)", _summary_cell(pool.writes)],
        ["opens / evictions per second (the pool's statistics)",
         f"{'-' if pool.opens_per_s is None else f'{pool.opens_per_s:.1f}'} / "
         f"{'-' if pool.evictions_per_s is None else f'{pool.evictions_per_s:.1f}'}"],
        ["loop lateness p50 / p99 / max (ms, 10 ms ticker)", _summary_cell(pool.lateness)],
        ["OS threads: most seen; RSS at the end (MiB)", f"{pool.threads_max:,}; {pool.rss_mib:,.1f}"],
        ["pool close time", f"{pool.close_s:,.2f} s"],
        ["acknowledged writes on the servers after the pool closed",
         f"{pool.rows_found:,} of {pool.rows_acknowledged:,} ({pool.rows_unacknowledged} unacknowledged found)"],
    ]
    return [
        f"{pool.tenants:,} tenants through ReplicaPool(max_open={pool.max_open}, sync_interval={pool.interval_s:g}) "
        f"over {pool.servers} local sync servers; skewed access (Zipf-like, exponent {pool.skew:g}), "
        f"{pool.rate:g} requests a second, half writes (an INSERT in a transaction), half reads, for "
        f"{pool.duration_s:g} s. Pool statistics at the end: {pool.statistics}",
        "",
        *_table(["measure", "ours"], rows),
    ]
