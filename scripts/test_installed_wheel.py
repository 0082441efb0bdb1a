"""`make test-wheel`: the built linux x86_64 wheel tested as a user installs it, in a fresh venv outside the checkout.

1. A venv (build/wheel-venv, git-ignored; rebuilt when requirements.txt or the interpreter changes) holds only the
   pinned test dependencies (requirements.txt) and, installed afresh on every run, the wheel from dist/.
2. tests/ and testkit/ are copied, with the project's pytest.ini and mypy.ini and a pyrightconfig.json for that venv,
   into a temporary folder outside the checkout, so that nothing on the path leads to the checkout's turso/.
3. There the whole suite runs against the installed package (TURSO_SYNC_AIO_UNDER_TEST=installed makes
   tests/test_lifecycle.py prove that turso.lib_sync_aio comes from site-packages); mypy --strict checks the tests and
   pyright strict the typing snippets of tests/typing/, both resolving `turso` from the installed wheel.
4. `pip check` must be clean, and `pip uninstall pyturso` must leave no file of it in site-packages.
5. A second venv (build/wheel-bare-venv) holds only what an application has, installed with the README's command:
   the wheel and `sqlalchemy[asyncio]` (versions held to requirements.txt's pins; the `asyncio` extra is what brings
   greenlet wherever SQLAlchemy does not install it by itself). There a small program opens
   `sqlite+aioturso_sync://` through the wheel's entry point (nothing registered by hand), writes a row and pushes it;
   the row must then be on a local sync server.

Usage: python scripts/test_installed_wheel.py (after `make wheel`; `make test-wheel` does both)
"""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.sync_server import SyncServer

CHECKOUT = Path(__file__).resolve().parent.parent
VENV = CHECKOUT / "build" / "wheel-venv"
VENV_PYTHON = VENV / "bin" / "python"
# What the venv was made from; a change rebuilds it.
VENV_STAMP = VENV / ".made-from"
REQUIREMENTS = CHECKOUT / "requirements.txt"
BARE_VENV = CHECKOUT / "build" / "wheel-bare-venv"
# What the README tells an application to install next to the wheel for `sqlite+aioturso_sync://`: pyturso's own
# `sqlalchemy` extra asks for SQLAlchemy alone, which leaves out greenlet where SQLAlchemy does not require it (2.1,
# and 2.0 on some platforms), and SQLAlchemy's asyncio layer cannot run without it.
SQLALCHEMY = "sqlalchemy[asyncio]>=2.0.45"
BARE_PYTHON = BARE_VENV / "bin" / "python"
# What the bare venv holds: the wheel with what it requires (typing-extensions, and aiohttp with its own requirements,
# async-timeout only before Python 3.11), and SQLAlchemy with greenlet.
BARE_PACKAGES: set[str] = {
    "pyturso", "typing_extensions",
    "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "idna", "multidict", "propcache", "yarl",
    "sqlalchemy", "greenlet",
} | ({"async_timeout"} if sys.version_info < (3, 11) else set[str]())
# What an application does with the wheel and SQLAlchemy, run in the bare venv: argv[1] is the engine URL.
APPLICATION = """
import asyncio, sys
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from turso.sqlalchemy_sync_aio import get_sync_connection

async def main(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE wheel_check(body TEXT)"))
            await conn.execute(text("INSERT INTO wheel_check VALUES ('written through the wheel')"))
        async with engine.connect() as conn:
            await (await get_sync_connection(conn)).push()
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""
PYRIGHT = CHECKOUT / "node_modules" / ".bin" / "pyright"
TURSODB = CHECKOUT / "node_modules" / "@tursodatabase" / "cli-linux-x64-gnu" / "tursodb"
# The one wheel of dist/ that runs on this machine (the tests need the sync server, which is linux x86_64 here).
WHEEL_PATTERN = "pyturso-*+syncaio.*-manylinux*x86_64*.whl"
# The dev venv's pyright settings, for the copy: strict, with `turso` resolved from the wheel venv. Only the
# application-style snippets: for an installed library pyright also reports names that the driver re-exports without
# `as` (turso.lib_sync.RemoteEncryptionCipher, which tests/test_signature_parity.py reads), a finding about the driver
# that mypy.ini's implicit_reexport already records.
PYRIGHT_SETTINGS = {
    "include": ["tests/typing"],
    "exclude": ["**/__pycache__"],
    "typeCheckingMode": "strict",
    "pythonVersion": "3.10",
    "reportMissingModuleSource": "none",
    "reportUnnecessaryTypeIgnoreComment": "error",
    "enableTypeIgnoreComments": False,
}


class WheelTestError(Exception):
    """A step of the installed-wheel test failed; the message says which and why."""


def run(command: list[str], cwd: Path, environment: dict[str, str] | None = None) -> str:
    """Run a command, echoing it; raise WheelTestError with its output if it fails; return its stdout."""
    print("+", " ".join(command), flush=True)
    finished = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        raise WheelTestError(f"{' '.join(command)} exited {finished.returncode}\n{finished.stdout}{finished.stderr}")
    return finished.stdout


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would put the checkout or the dev venv on the path."""
    environment = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    environment["PATH"] = f"{VENV / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def ensure_venv() -> None:
    """The wheel venv with requirements.txt installed; made anew when its inputs changed."""
    made_from = f"{platform.python_version()} {hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()}"
    if VENV_STAMP.is_file() and VENV_STAMP.read_text() == made_from and VENV_PYTHON.is_file():
        return
    shutil.rmtree(VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(VENV)], cwd=CHECKOUT)
    run([str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], cwd=CHECKOUT)
    VENV_STAMP.write_text(made_from)


def site_packages() -> Path:
    """The wheel venv's site-packages folder."""
    output = run([str(VENV_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=VENV)
    return Path(output.strip())


def leftovers(folder: Path) -> list[str]:
    """Whatever of pyturso is in site-packages: the turso package or a pyturso .dist-info."""
    return sorted(entry.name for entry in folder.iterdir() if entry.name == "turso" or entry.name.startswith("pyturso"))


def copy_tests(destination: Path) -> None:
    """tests/, the testkit/ it uses, and their configs, set up for the wheel venv (never the checkout)."""
    for folder in ("tests", "testkit"):
        shutil.copytree(CHECKOUT / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHECKOUT / "pytest.ini", destination / "pytest.ini")
    shutil.copy(CHECKOUT / "mypy.ini", destination / "mypy.ini")
    settings = {**PYRIGHT_SETTINGS, "venvPath": str(VENV.parent), "venv": VENV.name}
    (destination / "pyrightconfig.json").write_text(json.dumps(settings, indent=2) + "\n")


def test_installed_wheel() -> None:
    """All the steps of the module docstring; raise WheelTestError at the first that fails."""
    wheels = sorted((CHECKOUT / "dist").glob(WHEEL_PATTERN))
    if len(wheels) != 1:
        raise WheelTestError(f"expected one {WHEEL_PATTERN} in dist/, found {[w.name for w in wheels]}; make wheel")
    ensure_venv()
    packages = site_packages()
    pip = [str(VENV_PYTHON), "-m", "pip"]
    # A run that stopped half-way may have left the wheel installed; start from the bare venv every time.
    if leftovers(packages):
        run([*pip, "uninstall", "--yes", "pyturso"], cwd=VENV)
    # --no-deps: the venv already has what the wheel requires, which `pip check` below verifies.
    run([*pip, "install", "--quiet", "--no-deps", str(wheels[0])], cwd=VENV)
    environment = clean_environment()
    environment.update(
        TURSO_SYNC_AIO_UNDER_TEST="installed",
        TURSO_SYNC_AIO_CHECKOUT=str(CHECKOUT),
        TURSODB_BIN=os.environ.get("TURSODB_BIN", str(TURSODB)),
    )
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-wheel-tests-") as scratch:
        copy = Path(scratch)
        copy_tests(copy)
        print(f"testing {wheels[0].name} installed in {VENV}, tests copied to {copy}", flush=True)
        # pytest's output goes straight through: it is the suite's report.
        suite = subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-p", "no:cacheprovider"], cwd=copy, env=environment)
        if suite.returncode != 0:
            raise WheelTestError(f"the suite failed against the installed wheel (pytest exited {suite.returncode})")
        run([str(VENV_PYTHON), "-m", "mypy", "--config-file", "mypy.ini", "tests"], cwd=copy, environment=environment)
        run([str(PYRIGHT), "--pythonpath", str(VENV_PYTHON)], cwd=copy, environment=environment)
    run([*pip, "check"], cwd=VENV)
    run([*pip, "uninstall", "--yes", "pyturso"], cwd=VENV)
    left = leftovers(packages)
    if left:
        raise WheelTestError(f"pip uninstall pyturso left {left} in {packages}")
    test_bare_application(wheels[0])
    print("installed wheel: suite, typing, pip check, uninstall and a bare SQLAlchemy application all passed")


def test_bare_application(wheel: Path) -> None:
    """Step 5: the wheel and SQLAlchemy alone, in a fresh venv, push a row through `sqlite+aioturso_sync://`."""
    shutil.rmtree(BARE_VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(BARE_VENV)], cwd=CHECKOUT)
    run(
        [str(BARE_PYTHON), "-m", "pip", "install", "--quiet", "-c", str(REQUIREMENTS), str(wheel), SQLALCHEMY],
        cwd=BARE_VENV,
    )
    installed = json.loads(run([str(BARE_PYTHON), "-m", "pip", "list", "--format=json"], cwd=BARE_VENV))
    names = {package["name"].lower().replace("-", "_") for package in installed} - {"pip", "setuptools"}
    if names != BARE_PACKAGES:
        raise WheelTestError(
            f"the bare venv should hold only the wheel and SQLAlchemy with what they require "
            f"({sorted(BARE_PACKAGES)}), it holds {sorted(names)}"
        )
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-bare-app-") as scratch, SyncServer() as server:
        url = f"sqlite+aioturso_sync:///{scratch}/replica.db?remote_url={server.url}"
        run([str(BARE_PYTHON), "-c", APPLICATION, url], cwd=Path(scratch), environment=clean_environment())
        rows = server.execute("SELECT body FROM wheel_check")
    if rows != [("written through the wheel",)]:
        raise WheelTestError(f"the bare application's row did not reach the server: {rows}")


def main() -> int:
    try:
        test_installed_wheel()
    except WheelTestError as error:
        print(f"test_installed_wheel: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
