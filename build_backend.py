"""The build backend: setuptools', plus mypy when the compiled build is asked for.

``PREFORK_COMPILE=1 pip wheel .`` builds in an isolated environment that has
only the build requirements; mypyc (shipped with mypy) is added to them here,
and only then, so the default pure-Python build needs nothing beyond
setuptools. mypyc type-checks what it compiles, so the runtime dependencies
come along too: without them their types would be Any and strict mode fails.
Only the wheel itself is compiled (not its metadata or the sdist). An editable
install is always pure Python: compiled modules beside the sources would
shadow every later edit of the .py files, so asking for both is refused. See
setup.py for the list of compiled modules.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (the other PEP 517 hooks, as they are)

# mypy 1.10: the first release whose mypyc compiles the sources as they are.
MYPYC_REQUIREMENTS = ["mypy>=1.10", "redis>=5.0"]  # redis: worker.py's optional import

Settings = dict[str, Any] | None


def _compile_asked() -> bool:
    return os.environ.get("PREFORK_COMPILE", "").strip().lower() in ("1", "yes", "true", "on")


@contextlib.contextmanager
def _pure() -> Iterator[None]:
    """setup.py run as for the pure build (it compiles when PREFORK_COMPILE is set)."""
    asked = os.environ.pop("PREFORK_COMPILE", None)
    try:
        yield
    finally:
        if asked is not None:
            os.environ["PREFORK_COMPILE"] = asked


def _runtime_dependencies() -> list[str]:
    text = (Path(__file__).parent / "pyproject.toml").read_text(encoding="utf-8")
    return list(tomllib.loads(text)["project"]["dependencies"])


def get_requires_for_build_wheel(config_settings: Settings = None) -> list[str]:
    with _pure():  # setuptools runs setup.py here, before mypy is installed
        requires = build_meta.get_requires_for_build_wheel(config_settings)
    if _compile_asked():
        return [*requires, *MYPYC_REQUIREMENTS, *_runtime_dependencies()]
    return requires


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: Settings = None
) -> str:
    with _pure():  # the metadata is the same: no need to compile twice
        return build_meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_sdist(sdist_directory: str, config_settings: Settings = None) -> str:
    with _pure():  # an sdist holds sources only
        return build_meta.build_sdist(sdist_directory, config_settings)


def _refuse_compiled_editable() -> None:
    if _compile_asked():
        raise SystemExit(
            "PREFORK_COMPILE=1 with an editable install (pip install -e): refused, since "
            "compiled modules beside the sources would shadow edits; build a wheel instead "
            "(PREFORK_COMPILE=1 pip install .)"
        )


def get_requires_for_build_editable(config_settings: Settings = None) -> list[str]:
    _refuse_compiled_editable()
    return build_meta.get_requires_for_build_editable(config_settings)


def build_editable(
    wheel_directory: str, config_settings: Settings = None, metadata_directory: str | None = None
) -> str:
    _refuse_compiled_editable()  # pip --no-build-isolation skips the hook above
    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
