"""The background benchmark on the module before our transport, with this checkout's benchmark code.

The module is taken at BEFORE_COMMIT, the last commit before the sync engine ran on our own HTTP transport, from a
worktree of this repository (BEFORE_WORKTREE, in build/), set up once by `make bench-before`:
1. `git worktree add --detach` at BEFORE_COMMIT;
2. `make setup` there (its own .venv, driver and tursodb);
3. trustme with what it needs, at this checkout's pins (the TLS route's test CA; that commit's requirements predate
   it);
4. this checkout's benchmarks/ and testkit/ in place of that worktree's (again before every run, so that both sides
   run the same benchmark code);
then `python -m benchmarks.background` runs there with that worktree's interpreter, so that `turso` is the module at
BEFORE_COMMIT, and writes its record (file digests and commit of the module it measured, machine, date, load).

`make bench` uses the worktree when it is there: the before module's run of each route takes its turn right beside
ours, in the same window of the machine's load. `make bench-before` also writes a record of both routes to
benchmarks/results/before.json, which `make bench` shows when the worktree is not there (CI).
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.background import ROUTE_ARGUMENTS, BackgroundRecord
from benchmarks.common import CHECKOUT, RESULTS_DIR

# The last commit before the sync engine's HTTP went through our transport (issue 17).
BEFORE_COMMIT = "039f19c"
BEFORE_WORKTREE = CHECKOUT / "build" / f"before-{BEFORE_COMMIT}"
# What the TLS route's test CA needs (testkit/tls.py), by the name of each requirement in requirements.txt.
TLS_REQUIREMENTS = ("trustme", "cryptography", "cffi", "pycparser", "idna")
# Bounds: for setting the worktree up, and for one run of the benchmark (both routes of 100 replicas).
SETUP_SECONDS = 900.0
RUN_SECONDS = 900.0


def _run(command: list[str], cwd: Path, timeout: float) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=cwd, check=True, timeout=timeout)


def _python(worktree: Path) -> Path:
    return worktree / ".venv" / "bin" / "python"


def _tls_pins() -> list[str]:
    """The requirement lines of TLS_REQUIREMENTS in this checkout's requirements.txt (markers included)."""
    lines = (CHECKOUT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.split("=", 1)[0].strip() in TLS_REQUIREMENTS]


def create(worktree: Path, commit: str) -> None:
    """Make `worktree` a set-up checkout of `commit` (a git worktree, `make setup`, trustme), unless it is one."""
    if not worktree.exists():
        _run(["git", "worktree", "add", "--detach", str(worktree), commit], CHECKOUT, SETUP_SECONDS)
    _run(["make", "setup"], worktree, SETUP_SECONDS)
    _run([str(_python(worktree)), "-m", "pip", "install", "--quiet", *_tls_pins()], worktree, SETUP_SECONDS)


def is_ready(worktree: Path = BEFORE_WORKTREE) -> bool:
    """Whether `create` has set `worktree` up (its interpreter and the driver's files are there)."""
    return _python(worktree).is_file() and (worktree / ".driver" / ".linked").is_file()


def copy_code(worktree: Path = BEFORE_WORKTREE) -> None:
    """Put this checkout's benchmarks/ and testkit/ in place of the worktree's."""
    for folder in ("benchmarks", "testkit"):
        shutil.rmtree(worktree / folder, ignore_errors=True)
        shutil.copytree(CHECKOUT / folder, worktree / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))


def measure(output: Path, routes: tuple[str, ...], smoke: bool, worktree: Path = BEFORE_WORKTREE) -> BackgroundRecord:
    """Run the background benchmark on the worktree's module for `routes` (names of ROUTE_ARGUMENTS) and return its
    record, also left in `output`."""
    command = [str(_python(worktree)), "-m", "benchmarks.background", "--output", str(output)]
    for route in routes:
        command += ["--route", route]
    _run(command + (["--smoke"] if smoke else []), worktree, RUN_SECONDS)
    return BackgroundRecord.from_json(json.loads(output.read_text(encoding="utf-8")))


def main() -> None:
    """`python -m benchmarks.before [--smoke] [--commit C] [--output FILE]` (`make bench-before`)."""
    parser = argparse.ArgumentParser(description="The background benchmark on the module before our transport.")
    parser.add_argument("--commit", default=BEFORE_COMMIT, help=f"the module's commit (default {BEFORE_COMMIT})")
    parser.add_argument("--smoke", action="store_true", help="the benchmark's smoke size (5 replicas, 3 s)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "before.json", help="where the record goes")
    arguments = parser.parse_args()
    commit: str = arguments.commit
    output: Path = arguments.output.resolve()
    worktree = CHECKOUT / "build" / f"before-{commit}"
    create(worktree, commit)
    copy_code(worktree)
    measure(output, tuple(ROUTE_ARGUMENTS), arguments.smoke, worktree)
    print(f"Wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
