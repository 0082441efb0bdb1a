"""Run make targets at once, each with its output kept apart and printed whole when it ends; `make test` uses it.

The checks of `make test` mostly wait on servers, sockets and timeouts, not on the CPU (the suite on one Python takes
about three minutes of wall time and under one of CPU), so running them side by side takes the time of the longest
instead of the sum. Each target's output goes to build/checks/TARGET.log, and is printed in one piece when the target
ends, so that logs of different targets never interleave.

Usage: python scripts/run_checks.py TARGET [TARGET ...]   (exits 1 if any target failed)
"""

import subprocess
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
LOGS = CHECKOUT / "build" / "checks"


def main(targets: list[str]) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: dict[str, subprocess.Popen[bytes]] = {}
    for target in targets:
        with open(LOGS / f"{target}.log", "wb") as log:
            running[target] = subprocess.Popen(
                ["make", "--no-print-directory", target], cwd=CHECKOUT, stdout=log, stderr=subprocess.STDOUT
            )
    failed: list[str] = []
    while running:
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
        time.sleep(0.2)
    if failed:
        print(f"\nmake: failed: {' '.join(failed)} (logs in {LOGS.relative_to(CHECKOUT)}/)", file=sys.stderr)
        return 1
    print(f"\nmake: all {len(targets)} checks passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
