"""Run make targets side by side, one more at once than the machine has cores; `make test` uses it.

The checks of `make test` mostly wait on servers, sockets and timeouts: the suite on one Python took 217 s of wall time
and 45 s of CPU (user and system, its servers included) on the 2-core machine. So running some side by side saves
time. But their tests prove behaviour under deadlines, and seven at once on two cores (a load of about five, bursts
of CPU landing together) stretched statements and timeouts until tests failed on timing alone. So at most JOBS
targets run at once, by default one more than the cores (3 on 2 cores: about 0.6 of a core on average, which leaves
room for bursts and for other work, and keeps `.ci/run` under 15 minutes), started in the order given: `make test`
lists the longest first, so that the short ones fill in at the end. `make test JOBS=N` or the JOBS environment
variable changes it; JOBS=1 runs them one after the other.

Each target's output goes to build/checks/TARGET.log and is printed in one piece when the target ends, so that logs of
different targets never interleave.

Usage: python scripts/run_checks.py [--jobs N] TARGET [TARGET ...]   (exits 1 if any target failed)
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
LOGS = CHECKOUT / "build" / "checks"
# How often the runner looks whether a target has ended.
POLL_SECONDS = 0.2


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_jobs(text: str) -> int:
    """A JOBS value: a whole number of at least 1."""
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"JOBS must be a whole number of at least 1, not {text!r}")
    return jobs


def run(targets: list[str], jobs: int) -> int:
    """Run `targets` with `make`, at most `jobs` at once, in the order given; 0 if all passed, else 1."""
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    waiting = list(targets)
    running: dict[str, subprocess.Popen[bytes]] = {}
    failed: list[str] = []
    print(f"make: {len(targets)} checks, at most {jobs} at once (JOBS=N changes it)", flush=True)
    while waiting or running:
        while waiting and len(running) < jobs:
            target = waiting.pop(0)
            with open(LOGS / f"{target}.log", "wb") as log:
                running[target] = subprocess.Popen(
                    ["make", "--no-print-directory", target], cwd=CHECKOUT, stdout=log, stderr=subprocess.STDOUT
                )
        for target, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[target]
            outcome = "passed" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            if process.returncode != 0:
                failed.append(target)
            sys.stdout.write(f"\n== {target}: {outcome} after {time.monotonic() - started:.0f} s\n")
            sys.stdout.write((LOGS / f"{target}.log").read_text(errors="replace"))
            sys.stdout.flush()
        time.sleep(POLL_SECONDS)
    if failed:
        print(f"\nmake: failed: {' '.join(failed)} (logs in {LOGS.relative_to(CHECKOUT)}/)", file=sys.stderr)
        return 1
    print(f"\nmake: all {len(targets)} checks passed in {time.monotonic() - started:.0f} s")
    return 0


def main() -> int:
    """Parse the command line and run the targets."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # One more than the cores by default: the checks wait more than they compute (see above).
    parser.add_argument(
        "--jobs",
        type=parse_jobs,
        default=os.environ.get("JOBS") or str(cores() + 1),
        help="at most this many targets at once (default: JOBS from the environment, else one more than the cores)",
    )
    parser.add_argument("targets", nargs="+", help="make targets, the longest first")
    arguments = parser.parse_args()
    jobs: int = arguments.jobs
    targets: list[str] = arguments.targets
    return run(targets, jobs)


if __name__ == "__main__":
    sys.exit(main())
