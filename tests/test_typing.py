"""What users' type checkers reveal for every public call: the concrete type, never Any or Unknown.

mypy (the project's mypy.ini: strict) and pyright (the project's pyrightconfig.json: strict) each run once, on one
application snippet with a `reveal_type` per call; each reveal_type line says the type it must show after `# is`.
The static `assert_type` checks and the misuse that must stay an error live in tests/typing/ (`make typecheck`).
"""

import json
import re
import subprocess
from pathlib import Path
from typing import TypedDict

import pytest
from mypy import api as mypy_api

from tests.helpers import CHECKOUT

# Where mypy.ini and pyrightconfig.json are: the checkout, or the copy of tests/ that tests the installed wheel (its
# configs resolve `turso` from that venv's site-packages).
CONFIG_ROOT = Path(__file__).resolve().parent.parent
PYRIGHT = CHECKOUT / "node_modules" / ".bin" / "pyright"

SNIPPET = """\
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

import turso.aio.sync
from turso.lib_sync_aio import ReplicaPool, connect_sync
from turso.sqlalchemy_sync_aio import get_sync_connection


async def application() -> None:
    reveal_type(connect_sync("app.db", "http://127.0.0.1:8080"))  # is turso.lib_sync_aio.ConnectionSync
    reveal_type(turso.aio.sync.connect("app.db"))  # is turso.lib_sync_aio.ConnectionSync
    conn = await connect_sync("app.db", "http://127.0.0.1:8080", auth_token="token")
    reveal_type(conn)  # is turso.lib_sync_aio.ConnectionSync
    reveal_type(await conn.pull())  # is bool
    reveal_type(await conn.push())  # is None
    reveal_type(await conn.checkpoint())  # is None
    stats = await conn.stats()
    reveal_type(stats)  # is turso.lib_sync_aio.SyncStats
    reveal_type(stats.cdc_operations)  # is int
    reveal_type(stats.main_wal_size)  # is int
    reveal_type(stats.revert_wal_size)  # is int
    reveal_type(stats.last_pull_unix_time)  # is int | None
    reveal_type(stats.last_push_unix_time)  # is int | None
    reveal_type(stats.revision)  # is str | None
    reveal_type(stats.network_sent_bytes)  # is int
    reveal_type(stats.network_received_bytes)  # is int
    reveal_type(await conn.execute("SELECT 1"))  # is turso.lib_aio.Cursor
    reveal_type(await conn.commit())  # is None
    reveal_type(await conn.rollback())  # is None
    reveal_type(conn.isolation_level)  # is str | None
    reveal_type(await conn.sync())  # is bool
    reveal_type(conn.transaction())  # is turso.lib_sync_aio.Transaction
    async with conn.transaction() as block:
        reveal_type(block)  # is turso.lib_sync_aio.Transaction
        reveal_type(block.state)  # is turso.lib_sync_aio.TransactionState
    background = conn.sync_in_background(5.0, max_backoff=60.0)
    reveal_type(background)  # is turso.background_sync_aio.BackgroundSync
    reveal_type(background.status)  # is turso.background_sync_aio.BackgroundSyncStatus
    reveal_type(background.status.last_success_unix_time)  # is float | None
    reveal_type(background.status.healthy)  # is bool
    reveal_type(background.status.round_started_unix_time)  # is float | None
    reveal_type(await background.sync_now())  # is bool
    async with conn.sync_in_background(1.0) as entered_background:
        reveal_type(entered_background)  # is turso.background_sync_aio.BackgroundSync
    reveal_type(await conn.close())  # is None
    reveal_type(await turso.aio.sync.connect("app.db"))  # is turso.lib_sync_aio.ConnectionSync
    async with connect_sync("app.db") as entered:
        reveal_type(entered)  # is turso.lib_sync_aio.ConnectionSync
    async with turso.aio.sync.connect("app.db") as entered_public:
        reveal_type(entered_public)  # is turso.lib_sync_aio.ConnectionSync
    async with await connect_sync("app.db") as entered_awaited:
        reveal_type(entered_awaited)  # is turso.lib_sync_aio.ConnectionSync
    async with ReplicaPool(path_for=lambda tenant: tenant + ".db", remote_url_for=lambda tenant: None) as pool:
        reveal_type(pool)  # is turso.lib_sync_aio.ReplicaPool
        async with pool.connection("acme") as pooled:
            reveal_type(pooled)  # is turso.lib_sync_aio.ConnectionSync
        reveal_type(pool.get_stats())  # is turso.lib_sync_aio.ReplicaPoolStats
        reveal_type(pool.get_stats().failed_pushes_at_close)  # is int
        reveal_type(pool.sync_status("acme"))  # is turso.background_sync_aio.BackgroundSyncStatus | None
        reveal_type(pool.sync_statuses())  # is dict[str, turso.background_sync_aio.BackgroundSyncStatus]
        reveal_type(await pool.close(timeout=1.0))  # is frozenset[str]


async def sqlalchemy_application(connection: AsyncConnection, session: AsyncSession) -> None:
    reveal_type(await get_sync_connection(connection))  # is turso.lib_sync_aio.ConnectionSync
    reveal_type(await get_sync_connection(session))  # is turso.lib_sync_aio.ConnectionSync
    reveal_type(await (await get_sync_connection(session)).pull())  # is bool
"""

# {line number: type} from the `# is` comments; mypy shows the qualified names, pyright the last part of each.
EXPECTED: dict[int, str] = {
    number: line.split("  # is ")[1]
    for number, line in enumerate(SNIPPET.splitlines(), start=1)
    if "reveal_type(" in line
}


# The parts of pyright's --outputjson diagnostics that are read here.
class Position(TypedDict):
    line: int  # 0-based
    character: int


class Range(TypedDict):
    start: Position
    end: Position


class Diagnostic(TypedDict):
    severity: str  # "error", "warning" or "information" (reveal_type)
    message: str
    range: Range


def unqualified(type_name: str) -> str:
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", type_name)


def assert_concrete(revealed: dict[int, str]) -> None:
    for number, type_name in revealed.items():
        assert not re.search(r"\b(Any|Unknown)\b", type_name), f"line {number} reveals {type_name}"


@pytest.fixture(scope="module")
def snippet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("typing") / "application.py"
    path.write_text(SNIPPET)
    return path


@pytest.fixture(scope="module")
def mypy_output(snippet: Path) -> str:
    # mypy finds `turso` from the working directory (or, for the installed wheel, in site-packages), and keeps its
    # incremental cache there.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(CONFIG_ROOT)
        stdout, stderr, status = mypy_api.run(["--config-file", str(CONFIG_ROOT / "mypy.ini"), str(snippet)])
    assert status == 0, stdout + stderr
    return stdout


@pytest.fixture(scope="module")
def pyright_diagnostics(snippet: Path) -> list[Diagnostic]:
    # cwd: pyright reads the project's pyrightconfig.json (strict, the .venv) from there.
    finished = subprocess.run(
        [str(PYRIGHT), "--outputjson", str(snippet)], cwd=CONFIG_ROOT, capture_output=True, text=True, timeout=120
    )
    diagnostics: list[Diagnostic] = json.loads(finished.stdout)["generalDiagnostics"]
    return diagnostics


def test_mypy_reveals_concrete_types_for_every_call(mypy_output: str) -> None:
    revealed = {
        int(number): type_name.replace("builtins.", "").replace("?", "")
        for number, type_name in re.findall(r':(\d+): note: Revealed type is "(.*)"', mypy_output)
    }
    assert revealed == EXPECTED, mypy_output
    assert_concrete(revealed)
    assert ": error:" not in mypy_output, mypy_output


def test_pyright_reveals_concrete_types_for_every_call(pyright_diagnostics: list[Diagnostic]) -> None:
    revealed: dict[int, str] = {}
    for diagnostic in pyright_diagnostics:
        assert diagnostic["severity"] == "information", diagnostic
        match = re.fullmatch(r'Type of ".*" is "(.*)"', diagnostic["message"], flags=re.S)
        assert match is not None, diagnostic
        revealed[diagnostic["range"]["start"]["line"] + 1] = match.group(1)
    assert revealed == {number: unqualified(type_name) for number, type_name in EXPECTED.items()}, pyright_diagnostics
    assert_concrete(revealed)
