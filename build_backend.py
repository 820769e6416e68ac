"""The build backend: setuptools', plus mypy when the compiled build is asked for.

``PREFORK_COMPILE=1 pip wheel .`` builds in an isolated environment that has
only the build requirements; mypyc (shipped with mypy) is added to them here,
and only then, so the default pure-Python build needs nothing beyond
setuptools. An editable install is always pure Python: compiled modules beside
the sources would shadow every later edit of the .py files, so asking for
both is refused. See setup.py for the list of compiled modules.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (the rest of the PEP 517 hooks, as they are)

# mypy 1.10: the first release whose mypyc compiles the sources as they are.
MYPYC_REQUIREMENT = "mypy>=1.10"


def _compile_asked() -> bool:
    return os.environ.get("PREFORK_COMPILE", "").strip().lower() in ("1", "yes", "true", "on")


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires = build_meta.get_requires_for_build_wheel(config_settings)
    return [*requires, MYPYC_REQUIREMENT] if _compile_asked() else requires


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    if _compile_asked():
        raise SystemExit(
            "PREFORK_COMPILE=1 with an editable install (pip install -e): refused, since "
            "compiled modules beside the sources would shadow edits; build a wheel instead "
            "(PREFORK_COMPILE=1 pip install .)"
        )
    return build_meta.get_requires_for_build_editable(config_settings)
