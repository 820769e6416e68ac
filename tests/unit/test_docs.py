"""The user docs agree with the code and with each other.

- docs/reference.md's config tables list every key of prefork.config.DEFAULTS
  (a table default as ``compression.level`` rows), with its default written as
  TOML would, and no key that does not exist.
- Every relative link in README.md, docs/*.md and deploy/README.md points to a
  file in the repository (``git ls-files``), or to a page being written now
  (PAGES_IN_PROGRESS: delete each name when its page lands).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from prefork.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
# Pages linked from the docs that other changes are adding (issue 13's siblings).
PAGES_IN_PROGRESS = {
    "docs/websockets.md",
    "docs/observability.md",
}
# A row of a config table: | `key` | `default` | meaning |
CONFIG_ROW = re.compile(r"^\| `([a-z_][a-z0-9_.]*)` \| `(.*?)` \|", re.MULTILINE)
# [text](target), not an image's or an absolute URL's target.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def toml(value: Any) -> str:
    """A default as the docs show it: TOML syntax, ``unset`` for None."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    raise AssertionError(f"no TOML form for {value!r}")


def expected_rows() -> dict[str, str]:
    rows = {}
    for key, default in DEFAULTS.items():
        if isinstance(default, dict):
            for sub, value in default.items():
                rows[f"{key}.{sub}"] = toml(value)
        else:
            rows[key] = toml(default)
    return rows


def documented_rows() -> dict[str, str]:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, str] = {}
    for key, default in CONFIG_ROW.findall(section):
        assert key not in rows, f"{key} documented twice"
        rows[key] = default
    return rows


def test_every_config_key_is_documented_with_its_default() -> None:
    documented = documented_rows()
    expected = expected_rows()
    assert sorted(set(expected) - set(documented)) == [], "keys missing from docs/reference.md"
    assert sorted(set(documented) - set(expected)) == [], "documented keys that do not exist"
    wrong = {k: (documented[k], v) for k, v in expected.items() if documented[k] != v}
    assert wrong == {}, "defaults as documented (left) and in prefork.config.DEFAULTS (right)"


def test_the_default_check_can_fail() -> None:
    assert toml(5 * 1024 * 1024) == "5242880"
    assert toml(None) == "unset"
    assert toml([True, "a", 2.0]) == '[true, "a", 2.0]'
    assert CONFIG_ROW.findall("| `port` | `8080` | the port |\n") == [("port", "8080")]


def tracked_files() -> set[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return set(out.splitlines())


def pages() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "deploy" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]


def links(page: Path) -> list[str]:
    """The relative link targets of ``page``, resolved against the repository root."""
    found = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:; an anchor on the same page
        path = target.split("#", 1)[0]
        resolved = (page.parent / path).resolve()
        found.append(resolved.relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_in_the_repository(page: Path) -> None:
    tracked = tracked_files()
    # A directory link (deploy/kubernetes/) is fine when it holds tracked files.
    dirs = {str(Path(f).parent) for f in tracked}
    broken = [
        target
        for target in links(page)
        if target not in tracked and target not in dirs and target not in PAGES_IN_PROGRESS
    ]
    assert broken == []


def test_no_page_sends_readers_to_the_internal_contract() -> None:
    for page in pages():
        assert "API.md" not in page.read_text(encoding="utf-8"), page


def test_the_link_check_can_fail() -> None:
    page = ROOT / "docs" / "index.md"
    assert "docs/reference.md" in links(page)
    assert all(not t.startswith("http") for t in links(page))
