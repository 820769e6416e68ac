"""A reload (SIGHUP) in the making: the generation that boots beside the serving one.

The master re-reads its config (``reread_config``), forks a new generation
with it, and keeps a ``Reload`` until every new worker reported READY (then
the old generation is stopped) or the reload fails (then the new one is).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any

from prefork.config import Config, from_environ, layered, load_toml


@dataclasses.dataclass(eq=False)
class Reload:
    """A generation that is booting; it replaces the serving one once every worker is ready."""

    generation: int
    cfg: Config
    tls: ssl.SSLContext | None
    deadline: float
    pending: set[int]  # pids not ready yet


def reread_config(current: Config, config_file: str | None, overrides: Mapping[str, Any]) -> Config:
    """The file again, under the PREFORK_ variables and the flags (without a file,
    nothing can have changed: the environment is fixed at the master's start)."""
    if config_file is None:
        return current
    env_cfg, _ = from_environ(os.environ)
    return Config.build(layered(load_toml(config_file), env_cfg, overrides))
