"""connect_sync keeps exactly the blocking driver's signature, at runtime and in the stub.

These fail the day the pinned driver grows, renames or re-types a parameter, or the stub drifts from the module.
"""

import ast
import inspect
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any

import turso.lib_sync
import turso.lib_sync_aio

STUB = Path(turso.lib_sync_aio.__file__).with_suffix(".pyi")
# The blocking driver's function; one of its parameters has a type from the untyped native extension.
BLOCKING_CONNECT: Callable[..., object] = turso.lib_sync.connect_sync  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


def stub_function(name: str) -> ast.FunctionDef:
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{name} is not in {STUB}")


def stub_parameters(function: ast.FunctionDef) -> list[tuple[str, object, object]]:
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    missing: list[object] = [inspect.Parameter.empty] * (len(positional) - len(arguments.defaults))
    positional_defaults = missing + [ast.literal_eval(default) for default in arguments.defaults]
    described: list[tuple[str, object, object]] = [
        (argument.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default)
        for argument, default in zip(positional, positional_defaults)
    ]
    described += [
        (
            argument.arg,
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.empty if default is None else ast.literal_eval(default),
        )
        for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
    ]
    return described


def runtime_parameters(function: Any) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_connect_sync_has_the_blocking_drivers_names_kinds_and_defaults() -> None:
    assert runtime_parameters(turso.lib_sync_aio.connect_sync) == runtime_parameters(BLOCKING_CONNECT)


def test_connect_sync_has_the_blocking_drivers_annotations() -> None:
    ours = typing.get_type_hints(turso.lib_sync_aio.connect_sync)
    blocking = typing.get_type_hints(BLOCKING_CONNECT)
    del ours["return"], blocking["return"]
    assert ours == blocking


def test_stub_connect_sync_matches_the_runtime_and_the_blocking_driver() -> None:
    described = stub_parameters(stub_function("connect_sync"))
    assert described == runtime_parameters(turso.lib_sync_aio.connect_sync)
    assert described == runtime_parameters(BLOCKING_CONNECT)


def test_stub_declares_every_public_method_of_connection_sync() -> None:
    stub_class = next(
        node
        for node in ast.parse(STUB.read_text()).body
        if isinstance(node, ast.ClassDef) and node.name == "ConnectionSync"
    )
    declared = {
        node.name for node in stub_class.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    defined_here = {
        name
        for name, value in vars(turso.lib_sync_aio.ConnectionSync).items()
        if callable(value) and (not name.startswith("_") or (name.startswith("__") and name.endswith("__")))
    }
    assert defined_here - {"__del__"} <= declared
    assert declared <= set(dir(turso.lib_sync_aio.ConnectionSync))
