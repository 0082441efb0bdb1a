"""The benchmark's outputs: targets checked, Markdown tables on stdout, results.json and chart.png."""

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.background import LATENESS_P99_LIMIT_MS, THREADS_PER_REPLICA_LIMIT, BackgroundResult
from benchmarks.common import BLOCKING, DESCRIPTIONS, JS, MB, OURS, PYTURSO, THREADS, Machine, Settings
from benchmarks.concurrency import ConcurrencyResult, Speedup
from benchmarks.footprint import FootprintRow
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
    """One target, what this run measured, and the verdict ("PASS", "FAIL", or "not checked" in a smoke run)."""

    short: str
    target: str
    measured: str
    verdict: str


@dataclass
class Results:
    """Everything one run measured (written to results.json)."""

    machine: Machine
    # The turso/lib_sync_aio.py measured (checksum and commit).
    ours: str
    # Where the replicas and the remotes' files were, and on what filesystem.
    workdir: str
    smoke: bool
    started: str
    duration_s: float
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
    # Many replicas in background sync on one event loop (benchmarks/background.py).
    background: BackgroundResult
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
    return [
        TargetCheck(short, target, measured, "not checked" if smoke else ("PASS" if passed else "FAIL"))
        for short, target, measured, passed in checks
    ]


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


def tables(results: Results) -> str:
    """The run as Markdown tables (printed on stdout, and ready for the README)."""
    out: list[str] = []
    out.append(f"Machine: {results.machine.describe()}")
    out.append(f"Ours: turso/lib_sync_aio.py, {results.ours}")
    out.append(
        f"Run: {results.started}, {results.duration_s:.0f} s" + (" (smoke)" if results.smoke else "")
        + f"; files in {results.workdir}"
    )
    out.append("")
    overhead = {(result.implementation, result.operation, result.placement): result for result in results.overhead}
    rounds = results.settings["overhead_rounds"]
    out.append(
        f"Per-call overhead: min / median over every call of {rounds} interleaved rounds; the worker thread pinned to "
        "the event loop's core or to another core"
    )
    out.append("")
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
    out += _table(
        ["operation", "worker on", "ours", "pyturso module", "blocking, direct", "ours / pyturso (medians)"], rows
    )
    out.append("")
    out += query_table(results)
    out.append("")
    bootstrap_bytes = max(lateness_of(results.responsiveness, OURS, BOOTSTRAP).remote_bytes) / MB
    pull_bytes = max(lateness_of(results.responsiveness, OURS, PULL).received_bytes) / MB
    out.append(
        f"Event-loop lateness of a 1 ms heartbeat ({results.settings['responsiveness_rounds']} rounds; bootstrap of a "
        f"{bootstrap_bytes:.1f} MiB remote, pull of {pull_bytes:.1f} MiB of new rows)"
    )
    out.append("")
    rows = []
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
    out += _table(
        ["phase", "implementation", "max ms", "median round max ms", "p99 ms", "median ms", "duration ms", "beats"],
        rows,
    )
    out.append("")
    delay_ms = results.settings["proxy_delay"] * 1000
    out.append(
        f"Concurrency: N replicas pulling one new row each through a proxy adding {delay_ms:.0f} ms per request "
        f"(wall time, median of {results.settings['concurrency_rounds']} rounds)"
    )
    out.append("")
    walls = {(result.replicas, result.implementation): result for result in results.concurrency}
    speedups = {(speedup.replicas, speedup.implementation): speedup.speedup for speedup in results.speedups}
    rows = []
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
        out.append("WARNING: some pulls found nothing new")
    out.append("")
    out.append("Cost per open replica (our module; a fresh process; RSS compared with no replica open)")
    out.append("")
    rows = [
        [str(row.replicas), str(row.threads), f"+{row.threads_added}", f"{row.rss_mib:.1f}",
         f"+{row.rss_added_mib:.1f}", f"{row.rss_per_replica_mib:.2f}"]
        for row in results.footprint
    ]
    out += _table(["open replicas", "threads", "added", "RSS MiB", "added MiB", "MiB per replica"], rows)
    out.append("")
    out += local_sql_table(results)
    out.append("")
    out += background_table(results.background)
    out.append("")
    out.append("Targets" + (" (smoke run: not checked)" if results.smoke else ""))
    out.append("")
    out += _table(["target", "measured", "verdict"], [[c.target, c.measured, c.verdict] for c in results.targets])
    return "\n".join(out)


def query_table(results: Results) -> list[str]:
    """The local queries as a Markdown table: median per call of each implementation, and the ratios."""
    medians = {(result.implementation, result.operation, result.placement): result.median_us
               for result in results.queries}
    out = [
        f"Local queries: median per call over every call of {results.settings['query_rounds']} interleaved rounds; "
        "one core = the loop and the worker thread on one CPU (as under taskset -c 0)",
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


def background_targets(smoke: bool, result: BackgroundResult) -> list[TargetCheck]:
    """The background sync benchmark against its targets (issue 14); a smoke run checks nothing."""
    count = result.replicas
    missing = f", {result.missing_arrivals} never arrived" if result.missing_arrivals else ""
    checks = [
        ("background lateness p99",
         f"{count} replicas in background sync: loop lateness p99 < {LATENESS_P99_LIMIT_MS:.0f} ms",
         f"{result.lateness_p99_ms:.2f} ms", result.lateness_p99_ms < LATENESS_P99_LIMIT_MS),
        ("threads per replica",
         f"{count} replicas in background sync: <= {THREADS_PER_REPLICA_LIMIT:.0f} threads per replica",
         f"{result.threads_per_replica:.2f}", result.threads_per_replica <= THREADS_PER_REPLICA_LIMIT),
        ("propagation p99",
         f"{count} replicas: propagation p99 < 2 x interval + server latency ({result.propagation_limit_ms:,.0f} ms)",
         f"{result.propagation_p99_ms:,.0f} ms{missing}",
         result.propagation_p99_ms < result.propagation_limit_ms and result.missing_arrivals == 0),
    ]
    return [
        TargetCheck(short, target, measured, "not checked" if smoke else ("PASS" if passed else "FAIL"))
        for short, target, measured, passed in checks
    ]


def background_table(result: BackgroundResult) -> list[str]:
    """The background sync benchmark as a Markdown table."""
    out = [
        f"Background sync: {result.replicas} replicas, each in sync_in_background(interval={result.interval_s:g}), "
        f"on one event loop, measured for {result.duration_s:.0f} s after a warm-up; a row written every "
        f"{result.write_every_s:g} s on a different replica",
        "",
    ]
    rows = [
        ["loop lateness p50 / p99 / max (1 ms heartbeat)",
         f"{result.lateness_p50_ms:.2f} / {result.lateness_p99_ms:.2f} / {result.lateness_max_ms:.2f} ms",
         f"heartbeat alone: p99 {result.idle_lateness_p99_ms:.2f}, max {result.idle_lateness_max_ms:.2f} ms"],
        ["CPU per replica per hour",
         f"{result.cpu_s_per_replica_hour:,.1f} s ({result.cpu_s_per_replica_hour_net:,.1f} s net of the heartbeat)",
         f"process: {result.cpu_cores:.2f} cores; heartbeat alone {result.heartbeat_cpu_cores:.3f}"],
        ["threads per replica", f"{result.threads_per_replica:.2f}",
         f"{result.threads_before} threads before, {result.threads_syncing} while syncing"],
        ["rounds per replica per second", f"{result.rounds_per_replica_s:.2f}",
         f"replicas with a failed round: {result.replicas_with_failures}"],
        ["propagation p50 / p99 / max",
         f"{result.propagation_p50_ms:,.0f} / {result.propagation_p99_ms:,.0f} / {result.propagation_max_ms:,.0f} ms",
         f"{result.arrivals} arrivals of {result.rows_written} rows, {result.missing_arrivals} missing; "
         f"server latency (one idle round) {result.server_latency_ms:.1f} ms"],
        ["WAL per replica at the end: max / median",
         f"{result.wal_bytes_max / 1024:,.0f} / {result.wal_bytes_median / 1024:,.0f} KiB",
         f"{result.wal_bytes_total / 2**20:,.1f} MiB for all; checkpoint_wal_bytes "
         f"{'none' if result.checkpoint_wal_bytes is None else f'{result.checkpoint_wal_bytes / 2**20:g} MiB'}"],
    ]
    return out + _table(["measure", "value", "context"], rows)


def write_json(results: Results, path: Path) -> None:
    path.write_text(json.dumps(asdict(results), indent=1) + "\n", encoding="utf-8")


def describe_implementations() -> str:
    return "\n".join(f"  {name}: {description}" for name, description in DESCRIPTIONS.items())


def settings_dict(settings: Settings) -> dict[str, Any]:
    values = asdict(settings)
    values["results_dir"] = str(settings.results_dir)
    return values

