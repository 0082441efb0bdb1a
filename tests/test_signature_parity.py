"""connect_sync keeps exactly the blocking driver's signature, at runtime and in the stub; the stub declares exactly
the methods that ConnectionSync defines.

These fail the day the pinned driver grows, renames, reorders or re-types a parameter, or the stub drifts from the
module.
"""

import ast
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import turso.lib_sync
import turso.lib_sync_aio

STUB = Path(turso.lib_sync_aio.__file__).with_suffix(".pyi")
# The blocking driver's function; one of its parameters has a type from the untyped native extension.
BLOCKING_CONNECT: Callable[..., object] = turso.lib_sync.connect_sync  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

# collections.abc.Callable, the origin of every Callable[...] annotation however it is spelt.
CALLABLE = typing.get_origin(Callable[[], None])

# What the names in the stub's connect_sync annotations stand for. The stub spells the native extension's cipher
# enum `_RemoteEncryptionCipher` (an alias of Any there, as the extension has no type information); it stands for
# the driver's class.
STUB_NAMES: dict[str, object] = {
    "str": str,
    "int": int,
    "bool": bool,
    "Callable": CALLABLE,
    "PartialSyncOpts": turso.lib_sync.PartialSyncOpts,
    "_RemoteEncryptionCipher": turso.lib_sync.RemoteEncryptionCipher,  # pyright: ignore[reportUnknownMemberType]
    "ConnectionSync": turso.lib_sync_aio.ConnectionSync,
}

# (name, kind, default) of each parameter, in order.
Described = list[tuple[str, object, object]]
StubNode = TypeVar("StubNode", ast.FunctionDef, ast.ClassDef)


def stub_node(kind: type[StubNode], name: str) -> StubNode:
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, kind) and node.name == name:
            return node
    raise AssertionError(f"no {kind.__name__} {name} in {STUB}")


def literal_default(default: ast.expr | None) -> object:
    return inspect.Parameter.empty if default is None else ast.literal_eval(default)


def stub_parameters(function: ast.FunctionDef) -> Described:
    """(name, kind, default) of each parameter of a stub function, in order, like runtime_parameters()."""
    arguments = function.args
    positional = [
        *((argument, inspect.Parameter.POSITIONAL_ONLY) for argument in arguments.posonlyargs),
        *((argument, inspect.Parameter.POSITIONAL_OR_KEYWORD) for argument in arguments.args),
    ]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    described: Described = [
        (argument.arg, kind, literal_default(default)) for (argument, kind), default in zip(positional, defaults)
    ]
    if arguments.vararg is not None:
        described.append((arguments.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    described += [
        (argument.arg, inspect.Parameter.KEYWORD_ONLY, literal_default(default))
        for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
    ]
    if arguments.kwarg is not None:
        described.append((arguments.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return described


def runtime_parameters(function: Callable[..., object]) -> Described:
    parameters = inspect.signature(function).parameters.values()
    return [(parameter.name, parameter.kind, parameter.default) for parameter in parameters]


def canonical(annotation: object) -> object:
    """An annotation in a form that compares equal however it is spelt: Optional[X] / X | None, typing.Callable /
    collections.abc.Callable, nested unions."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members: set[object] = set()
        for argument in typing.get_args(annotation):
            member = canonical(argument)
            members |= member if isinstance(member, frozenset) else {member}
        return frozenset(members)
    if origin is CALLABLE:
        parameters, result = typing.get_args(annotation)
        return ("Callable", tuple(canonical(parameter) for parameter in parameters), canonical(result))
    if origin is not None:
        return (origin, tuple(canonical(argument) for argument in typing.get_args(annotation)))
    return annotation


def stub_annotations(function: ast.FunctionDef) -> dict[str, object]:
    arguments = function.args
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    annotations = {argument.arg: argument.annotation for argument in every if argument.annotation is not None}
    if function.returns is not None:
        annotations["return"] = function.returns
    return {name: canonical(eval(ast.unparse(node), dict(STUB_NAMES))) for name, node in annotations.items()}


def test_connect_sync_has_the_blocking_drivers_names_kinds_and_defaults() -> None:
    assert runtime_parameters(turso.lib_sync_aio.connect_sync) == runtime_parameters(BLOCKING_CONNECT)


def test_connect_sync_has_the_blocking_drivers_annotations() -> None:
    ours = typing.get_type_hints(turso.lib_sync_aio.connect_sync)
    blocking = typing.get_type_hints(BLOCKING_CONNECT)
    # Only the return type differs: ours is the asyncio connection.
    assert ours.pop("return") is turso.lib_sync_aio.ConnectionSync
    assert blocking.pop("return") is turso.lib_sync.ConnectionSync
    assert ours == blocking


def test_stub_connect_sync_has_the_runtime_names_kinds_and_defaults() -> None:
    described = stub_parameters(stub_node(ast.FunctionDef, "connect_sync"))
    assert described == runtime_parameters(turso.lib_sync_aio.connect_sync)
    assert described == runtime_parameters(BLOCKING_CONNECT)


def test_stub_connect_sync_has_the_runtime_annotations() -> None:
    described = stub_annotations(stub_node(ast.FunctionDef, "connect_sync"))
    runtime = {name: canonical(hint) for name, hint in typing.get_type_hints(turso.lib_sync_aio.connect_sync).items()}
    assert described == runtime


def test_stub_declares_exactly_the_methods_connection_sync_defines() -> None:
    stub_class = stub_node(ast.ClassDef, "ConnectionSync")
    declared = {node.name for node in stub_class.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    # Public methods, properties and protocol methods (dunders) defined in our module; private helpers stay out of
    # the stub.
    defined_here = {
        name
        for name, value in vars(turso.lib_sync_aio.ConnectionSync).items()
        if (callable(value) or isinstance(value, property))
        and (not name.startswith("_") or (name.startswith("__") and name.endswith("__")))
    }
    assert declared == defined_here
    assert {"close", "pull", "push", "checkpoint", "stats"} <= declared
    # The stub's coroutines are the runtime's coroutines.
    for node in stub_class.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            runtime = vars(turso.lib_sync_aio.ConnectionSync)[node.name]
            assert isinstance(node, ast.AsyncFunctionDef) == inspect.iscoroutinefunction(runtime), node.name
