"""The architecture, kept true: layers, private members, import cycles, module size.

Read from the source (the AST of every module under prefork/), so a violation
fails here whatever the code does at run time. In the spirit of httpx's
test_exported_members.py. The layers, lowest first:

    base    errors, _types, _compiled, config, log, metrics, tls   (no prefork import above them)
    http    sans-I/O HTTP/1.1: no asyncio, socket or ssl
    engine  the connection: the only I/O of a request
    apps    the app interfaces, each typed against the engine
    worker  one worker process
    master  the arbiter and its listeners
    top     server, cli, __init__, __main__

A module may import its own layer and those below it. The allow-lists are the
known exceptions, each with the change that removes it: when it is made, the
test fails until the entry is deleted (so a list can only shrink).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "prefork"
MAX_LINES = 600
LAYERS = ("base", "http", "engine", "apps", "worker", "master", "top")
BASE = {"errors", "_types", "_compiled", "config", "log", "metrics", "tls"}
TOP = {"server", "cli", "__init__", "__main__"}

# Upward imports, as (module, imported module): none.
UPWARD_ALLOWED: set[tuple[str, str]] = set()
# Reaches into another object's private members, as (module, attribute): none.
PRIVATE_ALLOWED: set[tuple[str, str]] = set()
# For good: private members of the standard library's objects, each for a reason.
STDLIB_PRIVATE = {
    # socket.accept() builds a socket object through enum conversions per
    # connection (a measurable share of the accept-heavy benchmark): the fd alone.
    ("prefork.engine.accept", "_accept"),
    # logging.FileHandler has no public "reopen" (SIGUSR1, log rotation).
    ("prefork.log", "_open"),
    # asyncio (3.11) has no public way to run an ASGI app's first step from a
    # loop callback as part of the connection's task (3.12's eager tasks use
    # the same two): asgi.AsgiApp.respond_inline.
    ("prefork.apps.asgi", "_enter_task"),
    ("prefork.apps.asgi", "_leave_task"),
}
# Import cycles (TYPE_CHECKING imports included), as sorted module pairs: none.
CYCLES_ALLOWED: set[tuple[str, str]] = set()
# Modules over MAX_LINES: none.
LONG_ALLOWED: set[str] = set()
# Imports of asyncio, socket or ssl in http/: none.
IO_ALLOWED: set[tuple[str, str]] = set()


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        yield ".".join(parts), path


def layer(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[0] in ("http", "engine", "apps", "master"):
        return parts[0]
    if parts[0] == "worker":
        return "worker"
    if parts[0] in BASE:
        return "base"
    assert parts[0] in TOP, f"{module}: in no layer; add it to test_layers.py"
    return "top"


def imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every prefork module ``module`` imports, anywhere in the file, with the line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source, node.lineno
            for alias in node.names:
                # "from prefork.http import compression" imports a module too.
                yield f"{source}.{alias.name}", node.lineno


MODULES = dict(modules())


def prefork_imports(module: str) -> set[str]:
    """The prefork modules ``module`` imports (a name that is no module counts as its package)."""
    found = set()
    for name, _ in imports(module, MODULES[module]):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module and name != "prefork":
            found.add(name)
    return found


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        assert layer(module) in LAYERS


@pytest.mark.parametrize("module", [m for m in MODULES if layer(m) == "http"])
def test_http_modules_import_no_asyncio_socket_or_ssl(module: str) -> None:
    for name, line in imports(module, MODULES[module]):
        top = name.split(".")[0]
        if top in ("asyncio", "socket", "ssl") and (module, top) not in IO_ALLOWED:
            pytest.fail(f"{module}:{line} imports {top}: prefork.http is sans-I/O")


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = set()
    for module in MODULES:
        for name in prefork_imports(module):
            if LAYERS.index(layer(name)) > LAYERS.index(layer(module)):
                found.add((module, name))
    assert found - UPWARD_ALLOWED == set(), "imports of a layer above"
    assert UPWARD_ALLOWED - found == set(), "fixed: delete from UPWARD_ALLOWED"


class _PrivateReach(ast.NodeVisitor):
    """``x._name`` where ``x`` is not ``self``, ``cls`` or a module of this file."""

    def __init__(self, own: set[str]) -> None:
        self.own = own
        self.found: set[tuple[str, int]] = set()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        private = name.startswith("_") and not name.startswith("__")
        if private:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in self.own):
                self.found.add((name, node.lineno))
        self.generic_visit(node)


def test_no_module_touches_another_objects_private_members() -> None:
    found: dict[tuple[str, str], int] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # self and cls, and the module's own imports (``sys._getframe`` is the
        # standard library's own business, not a prefork object's).
        own = {"self", "cls", "sys", "os", "signal"}
        visitor = _PrivateReach(own)
        visitor.visit(tree)
        for name, line in visitor.found:
            found.setdefault((module, name), line)
    unexpected = {f"{m}:{line} .{n}" for (m, n), line in found.items()} - {
        f"{m}:{found[(m, n)]} .{n}" for m, n in PRIVATE_ALLOWED | STDLIB_PRIVATE if (m, n) in found
    }
    assert unexpected == set(), "reaches into another object's private members"
    assert PRIVATE_ALLOWED - set(found) == set(), "fixed: delete from PRIVATE_ALLOWED"


def test_no_import_cycles() -> None:
    graph = {module: prefork_imports(module) for module in MODULES}
    # Each pair of modules that import each other, directly or through others.
    pairs = {tuple(sorted((a, b))) for a in graph for b in graph[a] if _reaches(graph, b, a)}
    assert pairs - CYCLES_ALLOWED == set(), "import cycles"
    assert CYCLES_ALLOWED - pairs == set(), "fixed: delete from CYCLES_ALLOWED"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    stack, seen = [start], {start}
    while stack:
        current = stack.pop()
        if current == goal:
            return True
        for nxt in graph[current] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return False


def test_modules_are_at_most_600_lines() -> None:
    long = {
        m
        for m, path in MODULES.items()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert long - LONG_ALLOWED == set(), f"modules over {MAX_LINES} lines: split by concept"
    assert LONG_ALLOWED - long == set(), "fixed: delete from LONG_ALLOWED"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The AST walks see imports inside functions and a private reach through any name."""
    source = tmp_path / "x.py"
    source.write_text(
        "def f(conn):\n    import socket\n    from prefork.engine import state\n    conn._send(1)\n"
    )
    names = {name for name, _ in imports("prefork.http.x", source)}
    assert {"socket", "prefork.engine", "prefork.engine.state"} <= names
    visitor = _PrivateReach({"self"})
    visitor.visit(ast.parse(source.read_text()))
    assert visitor.found == {("_send", 4)}
