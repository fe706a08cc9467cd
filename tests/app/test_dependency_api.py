"""The hub and the library use their dependencies through public names only.

A name starting with `_` in redis-py, uvicorn, Starlette or sse-starlette may change in
any release (docs/production.md, upgrading dependencies): this reads every module of
`app/` and `pubsub/` and fails on an import of such a name, an attribute of that kind
read from an imported dependency name, or one that a subclass of a dependency's class
reaches through `self`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPENDENCIES = ("redis", "uvicorn", "starlette", "sse_starlette")
SOURCES = sorted([*(REPO / "app").rglob("*.py"), *(REPO / "pubsub").rglob("*.py")])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# Modules with a known use, as strict expected failures (remove once it is gone).
KNOWN: dict[str, str] = {}
# Underscore names the standard library documents as public (namedtuple's methods).
DOCUMENTED = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})


def _our_names() -> set[str]:
    """Every private name our own code defines: attributes it assigns, functions,
    classes, class fields and slots."""
    names: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries
    return {name for name in names if _is_private(name)}


OUR_NAMES = _our_names()


def _is_dependency(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in DEPENDENCIES


def _private_uses(tree: ast.Module, module_name: str) -> list[str]:
    found: list[str] = []
    imported: dict[str, object] = {}  # local name -> the dependency object it names
    others: set[str] = set()  # names imported from anything else (the standard library)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_dependency(node.module):
            assert node.module is not None
            if any(_is_private(part) for part in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"line {node.lineno}: import of {node.module}.{alias.name}")
                module = importlib.import_module(node.module)
                imported[alias.asname or alias.name] = getattr(module, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            others.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_dependency(alias.name):
                    others.add(alias.asname or alias.name.split(".")[0])
                else:
                    if any(_is_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
                    imported[alias.asname or alias.name.split(".")[0]] = None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and node.attr not in OUR_NAMES
            and node.attr not in DOCUMENTED
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", *others))
        ):
            # A private attribute no code of ours defines: someone else's.
            found.append(f"line {node.lineno}: .{node.attr} of a foreign object")
    # `self._x` in a subclass of a dependency's class, where `_x` is the dependency's.
    subclasses = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.bases]
    # Imported only when it has classes with bases (some modules build an app on import).
    ours = importlib.import_module(module_name) if subclasses else None
    for cls_node in subclasses:
        cls = getattr(ours, cls_node.name, None)
        if not inspect.isclass(cls):
            continue
        theirs = {
            name
            for base in cls.__mro__[1:]
            if _is_dependency(base.__module__)
            for name in vars(base)
            if _is_private(name)
        }
        for node in ast.walk(cls_node):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls", "super")
                and node.attr in theirs
            ):
                found.append(f"line {node.lineno}: {cls_node.name} uses {node.attr}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in theirs:
                found.append(f"line {node.lineno}: {cls_node.name} overrides {node.name}")
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "app":
        parts[0] = "progress_hub"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _case(path: Path) -> object:
    name = str(path.relative_to(REPO))
    if name in KNOWN:
        return pytest.param(path, id=name, marks=pytest.mark.xfail(strict=True, reason=KNOWN[name]))
    return pytest.param(path, id=name)


@pytest.mark.parametrize("path", [_case(path) for path in SOURCES])
def test_dependency_api_only_public_names_are_used(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    uses = _private_uses(tree, _module_name(path))
    assert uses == [], f"{path.relative_to(REPO)} touches private names: {uses}"


def test_dependency_api_check_finds_a_private_name() -> None:
    source = (
        "from sse_starlette import EventSourceResponse\n"
        "async def f() -> None:\n"
        "    await EventSourceResponse._listen_for_exit_signal()\n"
    )
    uses = _private_uses(ast.parse(source), "progress_hub.sse")
    assert uses == ["line 3: EventSourceResponse._listen_for_exit_signal"]
