"""chart.png: the run at a glance (speedup, wall time, per-call overhead, loop lateness, footprint); local_sql.png:
local SQL while syncing.

matplotlib's type stubs leave `**kwargs` untyped on nearly every plotting method, which pyright's strict mode reports
as a partially unknown member type on each call; that one rule is off in this file. Everything else stays strict.
"""
# pyright: reportUnknownMemberType=false

from pathlib import Path
from typing import Optional

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from benchmarks.background import LATENESS_P99_LIMIT_MS, THREADS_PER_REPLICA_LIMIT
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
    LABELS,
    LOCAL_SQL_P99_LIMIT_MS,
    OVERHEAD_RATIO_LIMIT,
    SPEEDUP_TARGETS,
    Results,
    format_us,
    lateness_of,
    local_sql_of,
)
from benchmarks.responsiveness import BOOTSTRAP, IDLE, PULL, LatenessResult


def _plain_number(value: float, position: Optional[int]) -> str:
    return f"{value:g}"


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


def _background_lateness(axes: Axes, results: Results) -> None:
    result = results.background
    values = [max(ms, 0.01) for _, ms in result.lateness_quantiles_ms]
    fractions = [fraction for fraction, _ in result.lateness_quantiles_ms]
    axes.step(values, fractions, where="post", color=COLORS[OURS],
              label=f"{result.replicas} replicas syncing (p99 {result.lateness_p99_ms:.2f} ms, "
                    f"max {result.lateness_max_ms:.1f} ms)")
    axes.axvline(LATENESS_P99_LIMIT_MS, color="red", linestyle="--", linewidth=1,
                 label=f"target: p99 < {LATENESS_P99_LIMIT_MS:.0f} ms")
    axes.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(_plain_number))
    axes.set_xlabel("heartbeat lateness (ms, log scale)")
    axes.set_ylabel("fraction of 1 ms heartbeats")
    axes.set_title(f"Background sync: event-loop lateness, {result.replicas} replicas at interval "
                   f"{result.interval_s:g} s, {result.duration_s:.0f} s", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(True, which="both", alpha=0.3)


def _background_propagation(axes: Axes, results: Results) -> None:
    result = results.background
    values = [ms / 1000 for _, ms in result.propagation_quantiles_ms]
    fractions = [fraction for fraction, _ in result.propagation_quantiles_ms]
    axes.step(values, fractions, where="post", color=COLORS[OURS],
              label=f"p50 {result.propagation_p50_ms / 1000:.2f} s, p99 {result.propagation_p99_ms / 1000:.2f} s "
                    f"({result.arrivals} arrivals, {result.missing_arrivals} missing)")
    axes.axvline(result.propagation_limit_ms / 1000, color="red", linestyle="--", linewidth=1,
                 label=f"target: p99 < 2 x interval + server latency ({result.propagation_limit_ms / 1000:.2f} s)")
    axes.axhline(0.99, color="gray", linestyle=":", linewidth=1)
    axes.set_xlabel("time for a row written on one replica to reach another (s)")
    axes.set_ylabel("fraction of arrivals")
    axes.set_title("Background sync: propagation between replicas", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(True, alpha=0.3)


def _background_cost(axes: Axes, results: Results) -> None:
    result = results.background
    labels = ["CPU s per replica-hour", "CPU s per replica-hour,\nnet of the heartbeat", "threads per replica"]
    values = [result.cpu_s_per_replica_hour, result.cpu_s_per_replica_hour_net, result.threads_per_replica]
    bars = axes.bar(labels[:2], values[:2], color=COLORS[OURS], width=0.5)
    axes.bar_label(bars, [f"{value:,.1f} s" for value in values[:2]], fontsize=8)
    axes.set_ylabel("process CPU seconds per replica per hour")
    threads_axes = axes.twinx()
    thread_bar = threads_axes.bar(labels[2:], values[2:], color=COLORS["none"], width=0.5)
    threads_axes.bar_label(thread_bar, [f"{result.threads_per_replica:.2f}"], fontsize=8)
    threads_axes.axhline(THREADS_PER_REPLICA_LIMIT, color="red", linestyle="--", linewidth=1,
                         label=f"target: <= {THREADS_PER_REPLICA_LIMIT:.0f} threads per replica")
    threads_axes.set_ylim(0, THREADS_PER_REPLICA_LIMIT * 1.5)
    threads_axes.set_ylabel("OS threads per replica")
    threads_axes.legend(fontsize=8, loc="upper left")
    axes.set_title(f"Background sync: cost per replica ({result.cpu_cores:.2f} cores for {result.replicas} "
                   f"replicas, {result.rounds_per_replica_s:.2f} rounds/s each)", fontsize=10)
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
        f"turso/lib_sync_aio.py {results.ours}    {results.started}"
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
    figure.text(0.5, -0.01, f"{results.machine.describe()}\nturso/lib_sync_aio.py {results.ours}    "
                f"{results.started}\n{verdicts}", ha="center", va="top", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
