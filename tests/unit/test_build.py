"""The two builds: pure Python by default, compiled with mypyc when asked (setup.py).

Which build runs is read from the modules Python loaded, so these tests hold
for both: CI runs them on the editable (pure) install and again on the
compiled wheel.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import prefork

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    """setup.py or build_backend.py as a module (setup.py runs setup() only as __main__)."""
    spec = importlib.util.spec_from_file_location(f"_prefork_{name}", ROOT / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP = _load("setup")
COMPILED_MODULES: list[str] = SETUP.COMPILED_MODULES


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_build_says_which_build_runs() -> None:
    expected = "compiled" if prefork.COMPILED else "pure Python"
    assert expected == prefork.BUILD


# Modules that import the llhttp binding (_llhttp.c, built with them): a
# pure Python install has neither.
NEEDS_BINDING = {"prefork/http/parsers/llhttp_parser.py"}


@pytest.mark.parametrize("path", COMPILED_MODULES)
def test_every_listed_module_is_of_the_build_that_runs(path: str) -> None:
    # No half-built copy: all the listed modules are extensions, or none.
    if path in NEEDS_BINDING and not prefork.COMPILED:
        with pytest.raises(ImportError, match="_llhttp"):
            importlib.import_module(_module_name(path))
        return
    module = importlib.import_module(_module_name(path))
    assert module.__file__ is not None
    extension = module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert extension is prefork.COMPILED, module.__file__


def test_the_llhttp_binding_is_built_with_the_compiled_build_only() -> None:
    try:
        from prefork.http.parsers import _llhttp  # noqa: F401
    except ImportError:
        built = False
    else:
        built = True
    assert built is prefork.COMPILED
    assert SETUP._llhttp_extension().name == "prefork.http.parsers._llhttp"
    assert SETUP._scan_extension().name == "prefork.http._scan"


def test_the_list_is_the_per_request_path() -> None:
    for path in COMPILED_MODULES:
        assert (ROOT / path).is_file(), path
    # Every module of the sans-I/O layer, so a new one is compiled too.
    http = {str(p.relative_to(ROOT)) for p in (ROOT / "prefork" / "http").rglob("*.py")}
    assert http - {"prefork/http/__init__.py"} <= set(COMPILED_MODULES)
    # The per-request modules of the ASGI and WSGI interfaces too, and the
    # per-message ones of a WebSocket; the ones that mypyc cannot compile as
    # they must be (a types.coroutine, exception subclasses of OSError, the
    # subclasses of the websockets library's classes), the lifespan and the
    # request body stream stay interpreted.
    apps = {p for p in COMPILED_MODULES if p.startswith("prefork/apps/")}
    per_message = {f"prefork/apps/websocket{m}.py" for m in ("", "_exchange")}
    assert {"prefork/apps/asgi_exchange.py", "prefork/apps/wsgi_call.py"} | per_message <= apps
    stay = ("asgi_context", "asgi_messages", "asgi_lifespan", "websocket_handshake", "wsgi_input")
    for path in (*stay, "websocket_deflate", "websocket_asgi"):
        assert f"prefork/apps/{path}.py" not in apps, path


def test_a_bad_prefork_compile_value_fails_the_build() -> None:
    result = subprocess.run(
        [sys.executable, "setup.py", "--name"],
        cwd=ROOT,
        env={**os.environ, "PREFORK_COMPILE": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PREFORK_COMPILE='maybe': expected 1 or 0" in result.stderr


def test_a_compiled_editable_install_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _load("build_backend")
    monkeypatch.setenv("PREFORK_COMPILE", "1")
    with pytest.raises(SystemExit, match=r"editable install .* refused"):
        backend.get_requires_for_build_editable()
    with pytest.raises(SystemExit, match=r"editable install .* refused"):  # --no-build-isolation
        backend.build_editable("unused")


def _copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "setup.py", "build_backend.py", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "prefork", tmp_path / "prefork", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    return tmp_path


@pytest.mark.parametrize("compile_asked", [False, True], ids=["pure", "compiled"])
def test_build_requirements_add_mypy_only_when_compiling(
    tmp_path: Path, compile_asked: bool
) -> None:
    # What pip asks the backend before an isolated build (it runs setup.py,
    # which must not need mypy yet): in a copy, since it writes egg-info.
    project = _copy_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PREFORK_COMPILE"}
    if compile_asked:
        env["PREFORK_COMPILE"] = "1"
    script = "import build_backend; print(build_backend.get_requires_for_build_wheel())"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    requires = result.stdout.strip().splitlines()[-1]
    assert ("mypy>=" in requires) is compile_asked
    assert ("zlib-ng" in requires) is compile_asked  # mypyc type-checks against it
    assert not list(project.rglob("*.so"))  # nothing compiled to answer
