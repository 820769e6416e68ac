"""Which build of prefork the benchmark runs: the compiled wheel of this checkout, or its sources.

Users who deploy install a wheel; the compiled build (docs/deployment.md,
``PREFORK_COMPILE=1``) is the one we measure as "prefork". Building it takes a
minute or two, so the unpacked wheel is kept under ``bench/.build/`` (git-
ignored), named by a hash of the files that go into it: an edit to any of
them builds afresh, an unchanged checkout reuses the last one. The "pure
Python" rows, and ``--build source``, run the checkout's .py files as
``pip install -e .`` does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".build"
# What goes into the wheel (the package, the C sources it compiles, and the
# build's own files), and the kinds of file in those folders that do.
INPUTS = ("prefork", "vendor", "setup.py", "build_backend.py", "pyproject.toml", "MANIFEST.in")
SOURCES = (".py", ".pyi", ".c", ".h")


def _digest() -> str:
    h = hashlib.sha256()
    for top in INPUTS:
        path = REPO / top
        files = (
            sorted(f for f in path.rglob("*") if f.suffix in SOURCES) if path.is_dir() else [path]
        )
        for f in files:
            if f.exists():
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def compiled_site(log=print) -> Path:
    """A folder holding the compiled build of this checkout, for PYTHONPATH; built if needed.

    Raises RuntimeError with the build's output when the compile fails, or
    when the wheel holds no extension module (a checkout without the
    compiled build would otherwise pass its pure Python off as compiled).
    """
    site = CACHE / _digest() / "site"
    if (site / "prefork").is_dir():
        return site
    log(f"building the compiled wheel of {REPO} (PREFORK_COMPILE=1, a minute or two)")
    # setuptools keeps object files under build/ and reuses one whose source
    # is older, whatever flags it was compiled with: a clean build each time.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="prefork-wheel-") as tmp:
        env = {**os.environ, "PREFORK_COMPILE": "1"}
        argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp, str(REPO)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("prefork-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"the compiled build failed:\n{done.stdout}\n{done.stderr}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if not any(name.endswith(".so") for name in wheel.namelist()):
                raise RuntimeError("the wheel holds no compiled module: no compiled build here")
            shutil.rmtree(site, ignore_errors=True)
            wheel.extractall(site)
    # Older builds of other checkouts are of no further use.
    for old in CACHE.iterdir():
        if old != site.parent:
            shutil.rmtree(old, ignore_errors=True)
    return site


def pythonpath(build: str) -> Path:
    """PYTHONPATH for prefork's processes: ``compiled`` or ``source``."""
    if build == "source":
        return REPO
    if build == "compiled":
        return compiled_site()
    raise ValueError(f"unknown build {build!r} (compiled or source)")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--build`` option of the scripts that run prefork beside its peers."""
    parser.add_argument(
        "--build",
        choices=("compiled", "source"),
        default="compiled",
        help="prefork runs the compiled wheel of this checkout (bench/build.py) or its sources",
    )
