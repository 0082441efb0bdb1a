"""What users' type checkers reveal for every awaited call: the concrete type, never Any or Unknown.

Runs mypy (strict, the project's mypy.ini) and pyright (strict, the project's pyrightconfig.json) once each on a small
application snippet with reveal_type; the static assert_type checks live in tests/typing/.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
from mypy import api as mypy_api

CHECKOUT = Path(__file__).resolve().parent.parent
PYRIGHT = CHECKOUT / "node_modules" / ".bin" / "pyright"

SNIPPET = '''
import turso.aio.sync
from turso.lib_sync_aio import connect_sync

async def application() -> None:
    conn = await connect_sync("app.db", "http://127.0.0.1:8080")
    reveal_type(conn)
    reveal_type(await conn.pull())
    reveal_type(await conn.push())
    reveal_type(await conn.checkpoint())
    reveal_type(await conn.stats())
    reveal_type((await conn.stats()).last_pull_unix_time)
    reveal_type(await conn.execute("SELECT 1"))
    async with turso.aio.sync.connect("app.db") as entered:
        reveal_type(entered)
    reveal_type(await turso.aio.sync.connect("app.db"))
'''

# What each reveal_type line above must show, in order, per checker.
EXPECTED_MYPY = [
    "turso.lib_sync_aio.ConnectionSync",
    "bool",
    "None",
    "None",
    "turso.lib_sync_aio.SyncStats",
    "int | None",
    "turso.lib_aio.Cursor",
    "turso.lib_sync_aio.ConnectionSync",
    "turso.lib_sync_aio.ConnectionSync",
]
EXPECTED_PYRIGHT = ["ConnectionSync", "bool", "None", "None", "SyncStats", "int | None", "Cursor", "ConnectionSync", "ConnectionSync"]


@pytest.fixture(scope="module")
def snippet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("typing") / "application.py"
    path.write_text(SNIPPET)
    return path


def test_mypy_reveals_concrete_types_for_every_awaited_call(snippet: Path) -> None:
    stdout, _, _ = mypy_api.run(["--config-file", str(CHECKOUT / "mypy.ini"), str(snippet)])
    revealed = re.findall(r'Revealed type is "([^"]+)"', stdout)
    assert [name.replace("?", "") for name in revealed] == EXPECTED_MYPY, stdout
    assert "Any" not in stdout


def test_pyright_reveals_concrete_types_for_every_awaited_call(snippet: Path) -> None:
    finished = subprocess.run(
        [str(PYRIGHT), "--outputjson", str(snippet)], cwd=CHECKOUT, capture_output=True, text=True, timeout=120
    )
    diagnostics = json.loads(finished.stdout)["generalDiagnostics"]
    revealed = [
        re.sub(r'^Type of ".*" is "(.*)"$', r"\1", diagnostic["message"], flags=re.S)
        for diagnostic in diagnostics
        if diagnostic["severity"] == "information"
    ]
    assert revealed == EXPECTED_PYRIGHT, diagnostics
    assert not any("Unknown" in entry or "Any" in entry for entry in revealed)
