"""chart.png: the run at a glance (speedup, wall time, per-call overhead, loop lateness, footprint, background sync);
local_sql.png: local SQL while syncing; sync.png: pull and push over a far link with TLS and on loopback, background
sync before and after our transport, and the half-open link.

matplotlib's type stubs leave `**kwargs` untyped on nearly every plotting method, which pyright's strict mode reports
as a partially unknown member type on each call; that one rule is off in this file. Everything else stays strict.
"""
# pyright: reportUnknownMemberType=false

import statistics
from pathlib import Path
from typing import Callable, Optional

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from benchmarks.background import LATENESS_P99_LIMIT_MS, PLAIN, THREADS_PER_REPLICA_LIMIT, TLS, BackgroundResult
from benchmarks.common import BLOCKING, JS, MB, OURS, PYTURSO, THREADS
from benchmarks.local_sql_while_syncing import KINDS, READ, SCENARIO_LABELS, SCENARIOS, STALL_TIMEOUT_SECONDS
from benchmarks.overhead import NOT_PINNED, OTHER_CORE, SAME_CORE
from benchmarks.queries import (
    AIOSQLITE,
    EXECUTE_FETCHALL,
    INSERT_COMMIT,
    ONE_CORE,
    QUERY,
    SELECT_100,
    TURSO_AIO,
)
from benchmarks.report import (
    BOOTSTRAP_LATENESS_LIMIT_MS,
    COLORS,
    EXECUTE_FETCHALL_LIMIT,
    FAR_RATIO_LIMIT,
    LABELS,
    LOCAL_SQL_P99_LIMIT_MS,
    LOOPBACK_RATIO_LIMIT,
    OVERHEAD_RATIO_LIMIT,
    SPEEDUP_TARGETS,
    Results,
    format_us,
    lateness_of,
    local_sql_of,
    tenants_configurations,
)
from benchmarks.responsiveness import BOOTSTRAP, IDLE, PULL, LatenessResult
from benchmarks.round_trips import FAR, LOOPBACK, NEAR, OPERATIONS, ROUTES, round_trip_of
from benchmarks.tenants import (
    ACTIVE,
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


def _plain_number(value: float, position: Optional[int]) -> str:
    return f"{value:g}"


def _no_label(value: float, position: Optional[int]) -> str:
    return ""


def _speedup(axes: Axes, results: Results) -> None:
    counts: list[int] = list(results.settings["replica_counts"])
    speedups = {(speedup.replicas, speedup.implementation): speedup.speedup for speedup in results.speedups}
    axes.plot(counts, counts, color="gray", linestyle=":", label="ideal (speedup = N)")
    for name in (OURS, PYTURSO, THREADS):
        style = "--" if name == THREADS else "-"
        label = LABELS[name] + (" (reference)" if name == THREADS else "")
        values = [speedups[count, name] for count in counts]
        axes.plot(counts, values, marker="o", linestyle=style, color=COLORS[name], label=label)
        if name == OURS:
            for count, value in zip(counts, values):
                axes.annotate(f"{value:.1f}x", (count, value), textcoords="offset points", xytext=(6, -12),
                              color=COLORS[name], fontsize=8)
    for count, target in SPEEDUP_TARGETS.items():
        if count in counts:
            axes.plot([count], [target], marker="_", markersize=22, markeredgewidth=2.5, color="red", linestyle="none")
            axes.annotate(f"target ≥ {target:.0f}x", (count, target), textcoords="offset points", xytext=(-75, 6),
                          color="red", fontsize=8)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xlim(min(counts) / 1.2, max(counts) * 1.4)
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.set_yticks(counts, [str(count) for count in counts])
    axes.set_xlabel("replicas pulling at once (N)")
    axes.set_ylabel("speedup over N blocking pulls in turn")
    delay_ms = results.settings["proxy_delay"] * 1000
    axes.set_title(f"Concurrency: speedup (proxy adds {delay_ms:.0f} ms per request)", fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, alpha=0.3)


def _wall_time(axes: Axes, results: Results) -> None:
    counts: list[int] = list(results.settings["replica_counts"])
    walls = {(result.replicas, result.implementation): result.median_s for result in results.concurrency}
    for name in (OURS, PYTURSO, BLOCKING, THREADS):
        label = LABELS[name] + {BLOCKING: ", in turn", THREADS: " (reference)"}.get(name, ", asyncio.gather")
        style = "--" if name == THREADS else "-"
        values = [walls[count, name] * 1000 for count in counts]
        axes.plot(counts, values, marker="o", linestyle=style, color=COLORS[name], label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.yaxis.set_minor_formatter(FuncFormatter(_plain_number))
    axes.tick_params(axis="y", which="minor", labelsize=7)
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.set_xlabel("replicas (N)")
    axes.set_ylabel("wall time for N pulls (ms, median, log scale)")
    axes.set_title("Concurrency: wall time, one new row per replica", fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, which="both", alpha=0.3)


def _overhead(axes: Axes, results: Results) -> None:
    medians = {(result.implementation, result.operation, result.placement): result.median_us
               for result in results.overhead}
    keys = list(results.overhead_ours_over_pyturso)
    ratios = [results.overhead_ours_over_pyturso[key] for key in keys]
    colors = [COLORS[OURS] if key.endswith(SAME_CORE) else "#aec7e8" for key in keys]
    bars = axes.bar(range(len(keys)), ratios, color=colors)
    labels: list[str] = []
    for key in keys:
        operation, placement = key.split(", ")
        ours, theirs = medians[OURS, operation, placement], medians[PYTURSO, operation, placement]
        labels.append(f"{format_us(ours)}\nvs {format_us(theirs)}")
    axes.bar_label(bars, labels, fontsize=7, padding=2)
    axes.axhline(1.0, color="gray", linewidth=1)
    axes.axhline(OVERHEAD_RATIO_LIMIT, color="red", linestyle="--", linewidth=1,
                 label=f"target: ≤ {OVERHEAD_RATIO_LIMIT:.2f}x (stats; pull and push ≤ 1.10x)")
    axes.set_ylim(0.8, max(*ratios, OVERHEAD_RATIO_LIMIT) + 0.12)
    axes.tick_params(axis="x", labelsize=7)
    names = {SAME_CORE: "same core", OTHER_CORE: "other core", NOT_PINNED: "not pinned"}
    ticks = [f"{key.split(', ')[0]}()\n{names[key.split(', ')[1]]}" for key in keys]
    axes.set_xticks(range(len(keys)), ticks, fontsize=8)
    axes.set_ylabel("ours / pyturso's module (median time per call)")
    axes.set_title("Per-call overhead vs pyturso's module (worker thread on the loop's core or another;\n"
                   "pull and push include a ~10 ms round trip to the local server)", fontsize=10)
    axes.legend(fontsize=8, loc="upper right")
    axes.grid(True, axis="y", alpha=0.3)


def _queries(axes: Axes, results: Results) -> None:
    medians = {(result.implementation, result.operation, result.placement): result.median_us
               for result in results.queries}
    groups = [(operation, placement) for operation in (QUERY, SELECT_100, INSERT_COMMIT, EXECUTE_FETCHALL)
              for placement in (ONE_CORE, NOT_PINNED)]
    names = (OURS, PYTURSO, TURSO_AIO, AIOSQLITE)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(groups))]
        values = [medians.get((name, operation, placement), 0.0) for operation, placement in groups]
        bars = axes.bar(positions, values, width=width, color=COLORS[name], label=LABELS[name])
        axes.bar_label(bars, [format_us(value) if value else "" for value in values], fontsize=6, rotation=90,
                       padding=2)
    titles = {
        QUERY: "execute + fetchall\n1 row",
        SELECT_100: "execute + fetchall\n100 rows",
        INSERT_COMMIT: "INSERT + commit",
        EXECUTE_FETCHALL: "execute_fetchall\n1 row",
    }
    ticks: list[str] = []
    for operation, placement in groups:
        if operation == EXECUTE_FETCHALL:
            ratio = results.queries_ratios[f"{EXECUTE_FETCHALL} vs {QUERY}, {placement}"]
            versus = f"{ratio:.2f}x execute+fetchall (target ≤ {EXECUTE_FETCHALL_LIMIT:.1f}x)"
        else:
            versus = f"ours/pyturso {results.queries_ratios[f'{operation}, {placement}']:.3f}x"
        ticks.append(f"{titles[operation]}, {placement}\n{versus}")
    axes.set_xticks(range(len(groups)), ticks, fontsize=7)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.set_ylabel("median per call (µs, log scale)")
    axes.set_title("Local queries per call: sync replicas (ours, pyturso's module) and local files (turso.aio, "
                   "aiosqlite); one core or not pinned", fontsize=10)
    axes.legend(fontsize=8, loc="upper left", ncols=4)
    axes.grid(True, axis="y", which="both", alpha=0.3)


def _cdf(axes: Axes, results: list[LatenessResult], phase: str, title: str) -> None:
    for name in (OURS, PYTURSO, "none"):
        found = lateness_of(results, name, phase if name != "none" else IDLE)
        values = sorted(max(value, 0.01) for value in found.lateness_ms)
        fractions = [(index + 1) / len(values) for index in range(len(values))]
        label = f"{LABELS[name]} (max {found.max_ms:.1f} ms, p99 {found.p99_ms:.1f} ms)"
        axes.step(values, fractions, where="post", color=COLORS[name], label=label)
    blocking = lateness_of(results, BLOCKING, phase)
    target = "target: max < 15 ms" if phase == BOOTSTRAP else "15 ms (the bootstrap's target)"
    axes.axvline(BOOTSTRAP_LATENESS_LIMIT_MS, color="red", linestyle="--", linewidth=1, label=target)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.set_xlabel("heartbeat lateness (ms, log scale)")
    axes.set_ylabel("fraction of 1 ms heartbeats")
    axes.set_title(title + f"\n(the blocking driver called on the loop stalls it for up to {blocking.max_ms:,.0f} ms)",
                   fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(True, which="both", alpha=0.3)


def _footprint(axes: Axes, results: Results) -> None:
    replicas = [str(row.replicas) for row in results.footprint]
    bars = axes.bar(replicas, [row.rss_added_mib for row in results.footprint], color=COLORS[OURS], width=0.5)
    axes.bar_label(bars, [f"+{row.rss_added_mib:.0f} MiB, +{row.threads_added} threads\n"
                          f"({row.rss_per_replica_mib:.2f} MiB per replica)" for row in results.footprint], fontsize=8)
    axes.set_ylim(top=max(row.rss_added_mib for row in results.footprint) * 1.25 + 1)
    axes.set_xlabel("open replicas (our module)")
    axes.set_ylabel("resident memory added (MiB)")
    axes.set_title("Cost of open replicas (RSS and OS threads added, fresh process)", fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)


# Each background route's colour; a run before our transport is drawn dashed in the same colour.
ROUTE_COLORS = {PLAIN: COLORS[OURS], TLS: "#9467bd"}


def _background_runs(results: Results) -> list[tuple[str, str, BackgroundResult]]:
    """(label, line style, result) of every background run to draw: this run's routes, then the before record's."""
    runs = [(result.route, "-", result) for result in results.background]
    before = results.background_before
    if before is not None:
        runs += [(f"{result.route}, before ({before.module.commit[:7]})", "--", result) for result in before.results]
    return runs


def _background_lateness(axes: Axes, results: Results) -> None:
    for label, style, result in _background_runs(results):
        values = [max(ms, 0.01) for _, ms in result.lateness_quantiles_ms]
        fractions = [fraction for fraction, _ in result.lateness_quantiles_ms]
        axes.step(values, fractions, where="post", color=ROUTE_COLORS.get(result.route, "gray"), linestyle=style,
                  label=f"{label}: p99 {result.lateness_p99_ms:.2f} ms, max {result.lateness_max_ms:.1f} ms")
    axes.axvline(LATENESS_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"target: p99 < {LATENESS_P99_LIMIT_MS:.0f} ms")
    axes.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.set_xlabel("heartbeat lateness (ms, log scale)")
    axes.set_ylabel("fraction of 1 ms heartbeats")
    first = results.background[0]
    axes.set_title(f"Background sync: event-loop lateness, {first.replicas} replicas at interval "
                   f"{first.interval_s:g} s, {first.duration_s:.0f} s", fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(True, which="both", alpha=0.3)


def _background_propagation(axes: Axes, results: Results) -> None:
    for label, style, result in _background_runs(results):
        values = [ms / 1000 for _, ms in result.propagation_quantiles_ms]
        fractions = [fraction for fraction, _ in result.propagation_quantiles_ms]
        axes.step(values, fractions, where="post", color=ROUTE_COLORS.get(result.route, "gray"), linestyle=style,
                  label=f"{label}: p50 {result.propagation_p50_ms / 1000:.2f} s, p99 "
                        f"{result.propagation_p99_ms / 1000:.2f} s ({result.missing_arrivals} missing)")
    first = results.background[0]
    axes.axvline(first.propagation_limit_ms / 1000, color="red", linestyle="--", linewidth=1,
                 label=f"target: p99 < 2 x interval + server latency ({first.propagation_limit_ms / 1000:.2f} s)")
    axes.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    axes.set_xlabel("time for a row written on one replica to reach another (s)")
    axes.set_ylabel("fraction of arrivals")
    axes.set_title("Background sync: propagation between replicas", fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(True, alpha=0.3)


def _background_cost(axes: Axes, results: Results) -> None:
    runs = _background_runs(results)
    positions = list(range(len(runs)))
    cpu = [result.cpu_s_per_replica_hour for _, _, result in runs]
    bars = axes.bar([position - 0.2 for position in positions], cpu, width=0.4, color=COLORS[OURS],
                    label="CPU s per replica-hour (left)")
    axes.bar_label(bars, [f"{value:,.1f} s" for value in cpu], fontsize=7)
    axes.set_ylabel("process CPU seconds per replica per hour")
    threads_axes = axes.twinx()
    threads = [result.threads_per_replica for _, _, result in runs]
    thread_bars = threads_axes.bar([position + 0.2 for position in positions], threads, width=0.4,
                                   color=COLORS["none"], label="threads per replica (right)")
    threads_axes.bar_label(thread_bars, [f"{value:.2f}" for value in threads], fontsize=7)
    threads_axes.axhline(THREADS_PER_REPLICA_LIMIT, color="red", linestyle="--", linewidth=1,
                         label=f"target: <= {THREADS_PER_REPLICA_LIMIT:.0f} threads per replica")
    threads_axes.set_ylim(0, THREADS_PER_REPLICA_LIMIT * 1.5)
    threads_axes.set_ylabel("OS threads per replica")
    threads_axes.legend(fontsize=7, loc="upper right")
    axes.legend(fontsize=7, loc="upper left")
    axes.set_ylim(0, max(cpu) * 1.3)
    axes.set_xticks(positions, [label.replace(", ", ",\n") for label, _, _ in runs], fontsize=7)
    axes.set_title("Background sync: cost per replica", fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)


def write_chart(results: Results, path: Path) -> None:
    """Ten panels: speedup, wall time, per-call overhead, lateness CDFs (bootstrap, pull), footprint, queries, and
    background sync (lateness, propagation, cost)."""
    figure = Figure(figsize=(18, 21), layout="constrained")
    grid = figure.add_gridspec(4, 3)
    _speedup(figure.add_subplot(grid[0, 0]), results)
    _wall_time(figure.add_subplot(grid[0, 1]), results)
    _overhead(figure.add_subplot(grid[0, 2]), results)
    bootstrap_mb = max(lateness_of(results.responsiveness, OURS, BOOTSTRAP).remote_bytes) / MB
    pull_mb = max(lateness_of(results.responsiveness, OURS, PULL).received_bytes) / MB
    rounds = results.settings["responsiveness_rounds"]
    _cdf(figure.add_subplot(grid[1, 0]), results.responsiveness, BOOTSTRAP,
         f"Event-loop lateness while a {bootstrap_mb:.0f} MiB remote bootstraps ({rounds} rounds)")
    _cdf(figure.add_subplot(grid[1, 1]), results.responsiveness, PULL,
         f"Event-loop lateness during a pull of {pull_mb:.1f} MiB of new rows ({rounds} rounds)")
    _footprint(figure.add_subplot(grid[1, 2]), results)
    _queries(figure.add_subplot(grid[2, :]), results)
    _background_lateness(figure.add_subplot(grid[3, 0]), results)
    _background_propagation(figure.add_subplot(grid[3, 1]), results)
    _background_cost(figure.add_subplot(grid[3, 2]), results)
    verdict_cells = [f"{check.short} {check.measured} {check.verdict}" for check in results.targets]
    verdicts = "\n".join("    ".join(verdict_cells[start:start + 6]) for start in range(0, len(verdict_cells), 6))
    figure.suptitle("turso-sync-aio benchmarks" + (" (smoke run: targets not checked)" if results.smoke else ""),
                    fontsize=14)
    where = (
        f"{results.machine.describe()}    files in {results.workdir}\n"
        f"{results.module.describe()}    {results.started}"
    )
    figure.text(0.5, -0.005, f"{where}\n{verdicts}",
                ha="center", va="top", fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def _local_sql(axes: Axes, results: Results, kind: str) -> None:
    names = (OURS, PYTURSO, JS)
    width = 0.8 / len(names)
    bound_ms = results.settings["local_sql_bound"] * 1000
    for index, name in enumerate(names):
        found = [local_sql_of(results.local_sql, name, scenario, kind) for scenario in SCENARIOS]
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(SCENARIOS))]
        floor = 0.01
        axes.bar(positions, [max(result.p99_ms, floor) for result in found], width=width, color=COLORS[name],
                        label=f"{LABELS[name]}: bar p99, dot p50, line up to max", alpha=0.85,
                        hatch=["//" if result.blocked else "" for result in found])
        axes.vlines(positions, [max(result.p50_ms, floor) for result in found],
                    [max(result.max_ms, floor) for result in found], color="black", linewidth=1)
        axes.plot(positions, [max(result.p50_ms, floor) for result in found], "o", color="black", markersize=3)
        axes.plot(positions, [max(result.max_ms, floor) for result in found], "_", color="black", markersize=8)
        for position, result in zip(positions, found):
            if result.blocked:
                label = f"blocked\n> {bound_ms / 1000:g} s"
            elif result.count == 0:
                label = "no sample"
            else:
                label = f"p99 {result.p99_ms:,.2f}\nmax {result.max_ms:,.1f}"
            if result.errors:
                label += f"\n{result.errors} error" + ("s" if result.errors > 1 else "")
            # Above the largest value, where no line of this bar runs.
            top = max(result.max_ms, result.p99_ms, floor)
            axes.annotate(label, (position, top), textcoords="offset points", xytext=(0, 4),
                          ha="center", va="bottom", fontsize=6, color="red" if result.errors else "black")
    axes.axhline(LOCAL_SQL_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"target for ours: p99 ≤ {LOCAL_SQL_P99_LIMIT_MS:.0f} ms (and max below the JS binding's)")
    axes.set_yscale("log")
    axes.set_ylim(0.01, bound_ms * 20)
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.set_xticks(range(len(SCENARIOS)), [SCENARIO_LABELS[scenario].replace(", ", ",\n") for scenario in SCENARIOS],
                    fontsize=8)
    axes.set_ylabel("latency per statement (ms, log scale)")
    what = "a one-row SELECT" if kind == READ else "an INSERT + commit"
    axes.set_title(f"Local {kind}s while syncing ({what})", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(True, axis="y", which="both", alpha=0.3)


def write_local_sql_chart(results: Results, path: Path) -> None:
    """Two panels, reads and writes: p50, p99 and max per scenario and implementation."""
    figure = Figure(figsize=(16, 6.5), layout="constrained")
    for column, kind in enumerate(KINDS):
        _local_sql(figure.add_subplot(1, len(KINDS), column + 1), results, kind)
    settings = results.settings
    figure.suptitle(
        f"Local SQL while syncing, through a proxy adding {settings['local_sql_delay'] * 1000:,.0f} ms per request "
        f"({settings['local_sql_rounds']} pulls and pushes each; {settings['local_sql_window']:g} s after a pull "
        f"abandoned after {STALL_TIMEOUT_SECONDS:g} s on a stalled remote)"
        + (" (smoke run)" if results.smoke else ""),
        fontsize=12,
    )
    cells = [f"{check.short}: {check.measured} {check.verdict}" for check in results.targets
             if check.short.startswith("local SQL") or check.short == "stalled remote"]
    verdicts = "\n".join("    ".join(cells[start:start + 2]) for start in range(0, len(cells), 2))
    figure.text(0.5, -0.01, f"{results.machine.describe()}\n{results.module.describe()}    "
                f"{results.started}\n{verdicts}", ha="center", va="top", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def _pull_and_push(axes: Axes, results: Results, route: str, limit: float) -> None:
    names = (OURS, PYTURSO)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        found = [round_trip_of(results.round_trips, route, name, operation) for operation in OPERATIONS]
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(OPERATIONS))]
        bars = axes.bar(positions, [result.median_ms for result in found], width=width, color=COLORS[name],
                        label=LABELS[name])
        axes.bar_label(bars, [f"{result.median_ms:,.1f} ms" for result in found], fontsize=8, padding=2)
    ticks: list[str] = []
    for operation in OPERATIONS:
        ratio = results.round_trip_ratios[f"{route}, {operation}"]
        ticks.append(f"{operation}() of one row\nours / pyturso {ratio:.3f}x (target ≤ {limit:.2f}x)")
    axes.set_xticks(range(len(OPERATIONS)), ticks, fontsize=8)
    axes.set_ylabel("median per call (ms)")
    axes.margins(y=0.15)
    if route == FAR:
        title = (f"Far link with TLS: {results.settings['wan_round_trip'] * 1000:.0f} ms round trip, keep-alive "
                 "front end, tursodb")
    else:
        title = "Plain loopback: HTTP straight to tursodb (it closes every connection)"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, axis="y", alpha=0.3)


def _round_trips_and_connections(axes: Axes, results: Results) -> None:
    names = (OURS, PYTURSO)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [results.round_trips_per_call[f"{name}, {operation}"] for operation in OPERATIONS]
        connections = [round_trip_of(results.round_trips, FAR, name, operation).front_end_connections_per_100
                       for operation in OPERATIONS]
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(OPERATIONS))]
        bars = axes.bar(positions, values, width=width, color=COLORS[name], label=LABELS[name])
        axes.bar_label(bars, [f"{value:.2f} round trips\n{count or 0:g} connections\nper 100 calls"
                              for value, count in zip(values, connections)], fontsize=7, padding=2)
    axes.set_xticks(range(len(OPERATIONS)), [f"{operation}() of one row" for operation in OPERATIONS], fontsize=8)
    axes.set_ylabel("round trips waited for in turn (far minus undelayed, / RTT)")
    axes.margins(y=0.3)
    axes.set_title("Far link with TLS: round trips per call, and TCP connections the front end accepted", fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, axis="y", alpha=0.3)


# The routes' names where a tick has little room.
SHORT_ROUTES = {FAR: "far, TLS", NEAR: "undelayed", LOOPBACK: "loopback"}


def _cpu_per_call(axes: Axes, results: Results) -> None:
    names = (OURS, PYTURSO)
    groups = [(route, operation) for route in ROUTES for operation in OPERATIONS]
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [round_trip_of(results.round_trips, route, name, operation).cpu_ms for route, operation in groups]
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(groups))]
        bars = axes.bar(positions, values, width=width, color=COLORS[name], label=LABELS[name])
        axes.bar_label(bars, [f"{value:.1f}" for value in values], fontsize=7, padding=2)
    axes.set_xticks(range(len(groups)), [f"{operation}()\n{SHORT_ROUTES[route]}" for route, operation in groups],
                    fontsize=8)
    axes.set_ylabel("this process's CPU per call (ms, median)")
    axes.margins(y=0.15)
    axes.set_title("CPU per pull and push (every thread of the client process)", fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, axis="y", alpha=0.3)


def _background_before_after(axes: Axes, results: Results) -> None:
    runs = _background_runs(results)
    values = [result.lateness_p99_ms for _, _, result in runs]
    bars = axes.bar(range(len(runs)), values, color=[ROUTE_COLORS.get(result.route, "gray") for _, _, result in runs],
                    hatch=["//" if style == "--" else "" for _, style, _ in runs])
    axes.bar_label(bars, [f"p99 {value:.2f} ms\n{result.cpu_s_per_replica_hour:,.1f} CPU s per\nreplica-hour"
                          for value, (_, _, result) in zip(values, runs)], fontsize=7, padding=2)
    axes.axhline(LATENESS_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"target: p99 < {LATENESS_P99_LIMIT_MS:.0f} ms")
    axes.set_xticks(range(len(runs)), [label.replace(", ", ",\n") for label, _, _ in runs], fontsize=7)
    axes.set_ylabel("loop lateness p99 (ms)")
    axes.margins(y=0.3)
    first = results.background[0]
    axes.set_title(f"Background sync, {first.replicas} replicas: lateness p99 (hatched: before our transport)",
                   fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, axis="y", alpha=0.3)


# The recovery axis's ticks (seconds, log scale).
RECOVERY_TICKS = [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]


def _half_open(axes: Axes, results: Results) -> None:
    labels: list[str] = []
    for index, result in enumerate(results.half_open):
        recovered = [value for value in result.recovery_s if value is not None]
        axes.plot([index] * len(recovered), recovered, "o", color=COLORS[OURS], markersize=6, alpha=0.7)
        if recovered:
            middle = statistics.median(recovered)
            axes.plot([index - 0.2, index + 0.2], [middle, middle], color="black", linewidth=2)
            axes.annotate(f"median {middle:.2f} s", (index + 0.22, middle), textcoords="offset points", xytext=(4, -3),
                          fontsize=8)
        missing = len(result.recovery_s) - len(recovered)
        labels.append(f"request_timeout {result.request_timeout_s:g} s" + (" (default)" if result.default_timeout
                                                                           else "")
                      + (f"\n{missing} did not recover" if missing else ""))
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlim(-0.6, len(labels) - 0.4)
    axes.set_yscale("log")
    every = [value for result in results.half_open for value in result.recovery_s if value is not None]
    if every:
        low, high = min(every) / 2, max(every) * 2
        axes.set_ylim(low, high)
        axes.set_yticks([tick for tick in RECOVERY_TICKS if low <= tick <= high])
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.yaxis.set_minor_formatter(FuncFormatter(_no_label))
    axes.set_ylabel("from the link's return to the first successful round (s, log scale)")
    if results.half_open:
        first = results.half_open[0]
        axes.set_title(f"Half-open link for {first.black_hole_s:g} s, background sync every {first.interval_s:g} s: "
                       "recovery", fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)


def write_sync_chart(results: Results, path: Path) -> None:
    """Six panels: pull and push over the far link and on loopback, round trips and connections, CPU per call,
    background sync now and before, and recovery from a half-open link."""
    figure = Figure(figsize=(18, 11), layout="constrained")
    grid = figure.add_gridspec(2, 3)
    _pull_and_push(figure.add_subplot(grid[0, 0]), results, FAR, FAR_RATIO_LIMIT)
    _pull_and_push(figure.add_subplot(grid[0, 1]), results, LOOPBACK, LOOPBACK_RATIO_LIMIT)
    _round_trips_and_connections(figure.add_subplot(grid[0, 2]), results)
    _cpu_per_call(figure.add_subplot(grid[1, 0]), results)
    _background_before_after(figure.add_subplot(grid[1, 1]), results)
    _half_open(figure.add_subplot(grid[1, 2]), results)
    figure.suptitle("turso-sync-aio: the sync transport" + (" (smoke run: targets not checked)" if results.smoke
                                                            else ""), fontsize=14)
    pulls_and_pushes = {f"{operation} ({route})" for operation in OPERATIONS for route in (FAR, LOOPBACK)}
    cells = [f"{check.short}: {check.measured} {check.verdict}" for check in results.targets
             if check.short in pulls_and_pushes or check.short.startswith(("half-open", "background lateness"))]
    verdicts = "\n".join("    ".join(cells[start:start + 2]) for start in range(0, len(cells), 2))
    figure.text(0.5, -0.01, f"{results.machine.describe()}\n{results.module.describe()}    {results.started}\n"
                f"{verdicts}", ha="center", va="top", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")


# The implementations of the tenants chart, in the order drawn.
TENANTS_ORDER = (JS, PYTURSO, OURS)


def _short(value: float) -> str:
    """A figure for a label: whole numbers from 100 up (with thousands separators), else three digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _tenants_idle(results: Results) -> dict[str, list[TenantsResult]]:
    """Each implementation's idle results that ran, by N."""
    return {
        name: sorted((result for result in results.tenants if result.implementation == name
                      and result.load == TENANTS_IDLE and result.error is None), key=lambda result: result.replicas)
        for name in TENANTS_ORDER
    }


def _tenants_lines(axes: Axes, results: Results, value: Callable[[TenantsResult], float], label: str,
                   limit: Optional[float], limit_label: str, log: bool) -> None:
    """One measure of the idle configurations against N, a line per implementation, the target dashed."""
    counts: set[int] = set()
    for name, found in _tenants_idle(results).items():
        if not found:
            continue
        values = [value(result) for result in found]
        axes.plot([result.replicas for result in found], values, marker="o", color=COLORS[name], label=LABELS[name])
        for result, shown in zip(found, values):
            axes.annotate(_short(shown), (result.replicas, shown), textcoords="offset points", xytext=(5, 3),
                          fontsize=7, color=COLORS[name])
        counts.update(result.replicas for result in found)
    if limit is not None:
        axes.axhline(limit, color="red", linestyle="--", linewidth=1, label=limit_label)
    if log:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        axes.yaxis.set_minor_formatter(FuncFormatter(_no_label))
    if counts:
        axes.set_xticks(sorted(counts), [f"{count:,}" for count in sorted(counts)])
    axes.set_xlabel("idle replicas in the process (N)")
    axes.set_ylabel(label)
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(True, which="both", alpha=0.3)


def _tenants_open(axes: Axes, results: Results) -> None:
    _tenants_lines(axes, results, lambda result: result.open_s, "time to open all N (s)", None, "", False)
    for result in results.tenants:
        if result.all_at_once_open_s is not None and result.all_at_once_lateness is not None:
            axes.plot([result.replicas], [result.all_at_once_open_s], marker="*", markersize=12, color=COLORS[OURS],
                      linestyle="none", label=f"ours, {result.replicas:,} at once (loop max "
                                              f"{result.all_at_once_lateness.max_ms:,.0f} ms)")
    first = results.tenants[0] if results.tenants else None
    concurrency = first.open_concurrency if first is not None else 0
    axes.set_title(f"Time to open N fresh replicas ({concurrency} at a time; target: ours <= JS)", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")


def _tenants_lateness(axes: Axes, results: Results) -> None:
    configurations = tenants_configurations(results.tenants)
    width = 0.8 / len(TENANTS_ORDER)
    for index, name in enumerate(TENANTS_ORDER):
        positions: list[float] = []
        p99s: list[float] = []
        maxima: list[float] = []
        for group, (load, count) in enumerate(configurations):
            for result in results.tenants:
                if (result.load, result.replicas, result.implementation) == (load, count, name) and not result.error:
                    positions.append(group + (index - (len(TENANTS_ORDER) - 1) / 2) * width)
                    p99s.append(max(result.lateness.p99_ms, 0.01))
                    maxima.append(max(result.lateness.max_ms, 0.01))
        axes.bar(positions, p99s, width=width, color=COLORS[name], label=f"{LABELS[name]}: bar p99, dash max")
        axes.plot(positions, maxima, "_", color="black", markersize=10)
        for position, value in zip(positions, p99s):
            axes.annotate(_short(value), (position, value), textcoords="offset points", xytext=(0, 2), ha="center",
                          fontsize=6)
    axes.axhline(IDLE_LATENESS_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"targets, idle: p99 <= {IDLE_LATENESS_P99_LIMIT_MS:g} ms, max <= "
                       f"{IDLE_LATENESS_MAX_LIMIT_MS:g} ms; active: p99 <= {ACTIVE_LATENESS_P99_LIMIT_MS:g} ms")
    axes.axhline(IDLE_LATENESS_MAX_LIMIT_MS, color="red", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.yaxis.set_minor_formatter(FuncFormatter(_no_label))
    axes.set_xticks(range(len(configurations)), [f"{count:,} {load}" for load, count in configurations])
    axes.set_ylabel("loop lateness of a 10 ms ticker (ms, log scale)")
    axes.set_title("Event-loop lateness in the steady window", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(True, axis="y", which="both", alpha=0.3)


def _tenants_active(axes: Axes, results: Results) -> None:
    found = [result for result in results.tenants if result.load == ACTIVE and result.error is None]
    names = [name for name in TENANTS_ORDER if any(result.implementation == name for result in found)]
    for index, name in enumerate(names):
        result = next(result for result in found if result.implementation == name)
        values = [max(result.writes.p50_ms, 0.01), max(result.writes.p99_ms, 0.01)]
        bars = axes.bar([index - 0.2, index + 0.2], values, width=0.4, color=COLORS[name],
                        hatch=["", "//"], label=LABELS[name])
        axes.bar_label(bars, [f"p50 {_short(values[0])}", f"p99 {_short(values[1])}"], fontsize=7)
    axes.axhline(ACTIVE_WRITE_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"target: ours p99 <= {ACTIVE_WRITE_P99_LIMIT_MS:g} ms")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.yaxis.set_minor_formatter(FuncFormatter(_no_label))
    axes.set_xticks(range(len(names)), [LABELS[name] for name in names], fontsize=8)
    axes.set_ylabel("local write (INSERT in a transaction), ms, log scale")
    count = found[0].replicas if found else 0
    axes.set_title(f"{count:,} active replicas: local write p50 and p99 (hatched)", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(True, axis="y", which="both", alpha=0.3)


def write_tenants_chart(results: Results, path: Path) -> None:
    """Six panels: OS threads, time to open, loop lateness, CPU per replica-hour, RSS per replica, local writes."""
    figure = Figure(figsize=(18, 11), layout="constrained")
    grid = figure.add_gridspec(2, 3)
    if results.tenants:
        threads_axes = figure.add_subplot(grid[0, 0])
        _tenants_lines(threads_axes, results, lambda result: float(result.threads_max), "OS threads (most seen)",
                       THREADS_LIMIT, f"target: ours <= {THREADS_LIMIT}", True)
        threads_axes.set_title("OS threads of the process (/proc/PID/task)", fontsize=10)
        _tenants_open(figure.add_subplot(grid[0, 1]), results)
        _tenants_lateness(figure.add_subplot(grid[0, 2]), results)
        cpu_axes = figure.add_subplot(grid[1, 0])
        _tenants_lines(cpu_axes, results, lambda result: result.cpu_s_per_replica_hour,
                       "process CPU s per replica-hour", IDLE_CPU_LIMIT_S,
                       f"target: ours <= {IDLE_CPU_LIMIT_S:g} s at the largest N", False)
        cpu_axes.set_title("CPU of idle replicas syncing", fontsize=10)
        rss_axes = figure.add_subplot(grid[1, 1])
        _tenants_lines(rss_axes, results, lambda result: result.rss_per_replica_mib, "RSS per replica (MiB)",
                       RSS_PER_REPLICA_LIMIT_MIB, f"target: ours <= {RSS_PER_REPLICA_LIMIT_MIB:g} MiB", False)
        rss_axes.set_title("Resident memory per replica (after opening - before) / N", fontsize=10)
        _tenants_active(figure.add_subplot(grid[1, 2]), results)
    figure.suptitle("turso-sync-aio: a database per tenant, N replicas in one process"
                    + (" (smoke run: targets not checked)" if results.smoke else ""), fontsize=14)
    cells = [f"{check.short}: {check.measured} {check.verdict}" for check in results.targets
             if check.short.startswith("tenants")]
    verdicts = "\n".join("    ".join(cells[start:start + 2]) for start in range(0, len(cells), 2))
    figure.text(0.5, -0.01, f"{results.machine.describe()}\n{results.module.describe()}    {results.started}\n"
                f"{verdicts}", ha="center", va="top", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
