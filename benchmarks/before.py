"""`make bench-before`: the background benchmark on the module before our transport, recorded for `make bench`.

The module is taken at BEFORE_COMMIT, the last commit before the sync engine ran on our own HTTP transport; the
benchmark code is this checkout's, so that both runs measure the same way:
1. a git worktree of this repository at BEFORE_COMMIT, detached, in build/before-<commit> (kept for later runs);
2. `make setup` there (its own .venv, driver and tursodb);
3. this checkout's benchmarks/ and testkit/ in place of that worktree's, and trustme with what it needs at this
   checkout's pins (the TLS route's test CA; that commit's requirements predate it);
4. `python -m benchmarks.background --output benchmarks/results/before.json` there, with that worktree's interpreter,
   so that `turso` is the module at BEFORE_COMMIT.

The record names the module it measured (file digests and commit), its machine, date and load; `make bench` shows its
figures beside its own, with that date and commit.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import CHECKOUT, RESULTS_DIR

# The last commit before the sync engine's HTTP went through our transport (issue 17).
BEFORE_COMMIT = "039f19c"
# What the TLS route's test CA needs (testkit/tls.py), by the name of each requirement in requirements.txt.
TLS_REQUIREMENTS = ("trustme", "cryptography", "cffi", "pycparser", "idna")
# Bounds: for setting the worktree up, and for the benchmark itself (two routes of 100 replicas).
SETUP_SECONDS = 900.0
RUN_SECONDS = 900.0


def _run(command: list[str], cwd: Path, timeout: float) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=cwd, check=True, timeout=timeout)


def _tls_pins() -> list[str]:
    """The requirement lines of TLS_REQUIREMENTS in this checkout's requirements.txt (markers included)."""
    lines = (CHECKOUT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.split("=", 1)[0].strip() in TLS_REQUIREMENTS]


def prepare(worktree: Path, commit: str) -> None:
    """Make `worktree` a set-up checkout of `commit` with this checkout's benchmark code."""
    if not worktree.exists():
        _run(["git", "worktree", "add", "--detach", str(worktree), commit], CHECKOUT, SETUP_SECONDS)
    _run(["make", "setup"], worktree, SETUP_SECONDS)
    for folder in ("benchmarks", "testkit"):
        shutil.rmtree(worktree / folder, ignore_errors=True)
        shutil.copytree(CHECKOUT / folder, worktree / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    _run([str(worktree / ".venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", *_tls_pins()], worktree,
         SETUP_SECONDS)


def main() -> None:
    """`python -m benchmarks.before [--smoke] [--commit C] [--output FILE]`."""
    parser = argparse.ArgumentParser(description="The background benchmark on the module before our transport.")
    parser.add_argument("--commit", default=BEFORE_COMMIT, help=f"the module's commit (default {BEFORE_COMMIT})")
    parser.add_argument("--smoke", action="store_true", help="the benchmark's smoke size (5 replicas, 3 s)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "before.json", help="where the record goes")
    arguments = parser.parse_args()
    commit: str = arguments.commit
    output: Path = arguments.output.resolve()
    worktree = CHECKOUT / "build" / f"before-{commit}"
    prepare(worktree, commit)
    command = [str(worktree / ".venv" / "bin" / "python"), "-m", "benchmarks.background", "--output", str(output)]
    _run(command + (["--smoke"] if arguments.smoke else []), worktree, RUN_SECONDS)
    print(f"Wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
