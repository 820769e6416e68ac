"""The deploy/ files, checked by the real validators of their formats.

systemd-analyze checks the unit, kubernetes-validate the manifests, hadolint
the container file; the remaining tests check that the files agree with the
config's timeouts and with prefork's signals. A validator that cannot be found
skips its test with the way to install it (.ci/install-deploy-validators.sh).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prefork.config import DEFAULTS, Config, load_toml

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "prefork.service"
SOCKET_UNIT = DEPLOY / "prefork.socket"
EXAMPLE_TOML = DEPLOY / "example.toml"
CONTAINERFILE = DEPLOY / "Containerfile"
EXAMPLE_APP = DEPLOY / "app.py"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))

# kubernetes-validate ships its schemas, so this works offline; 1.33 is a
# version every supported managed cluster has reached.
KUBERNETES_VERSION = "1.33.0"
# The path the unit names for the console script; the tests swap in a real one.
UNIT_EXEC_PATH = "/opt/prefork/venv/bin/prefork"
# systemd-analyze security's scale is 0-100 (printed as 0.0-10.0); 20 is the
# top of its "OK" band.
MAX_UNIT_EXPOSURE = 20
VALIDATOR_TIMEOUT_S = 120
INSTALL_HINT = "install the deploy validators with: bash .ci/install-deploy-validators.sh"


def find_tool(name: str) -> str | None:
    """``name`` beside this interpreter (where pip puts console scripts), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH or in {Path(sys.executable).parent}; {INSTALL_HINT}")
    return path


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=VALIDATOR_TIMEOUT_S,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "NO_COLOR": "1"},
    )


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def example_config() -> Config:
    return Config.build(load_toml(str(EXAMPLE_TOML)))


# --- systemd -----------------------------------------------------------------


def unit_section_lists(text: str, wanted: str = "[Service]") -> dict[str, list[str]]:
    """Every assignment of a unit's section, in order (ExecReload= may be repeated)."""
    section = ""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == wanted:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_service_section(text: str, wanted: str = "[Service]") -> dict[str, str]:
    """The keys of a unit's section (the last assignment wins, as in systemd)."""
    return {key: values[-1] for key, values in unit_section_lists(text, wanted).items()}


_TIMESPAN_UNITS = {
    "": 1,
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
}


def timespan_seconds(value: str) -> float:
    """A systemd time span such as ``45``, ``45s`` or ``1min 30s``, in seconds."""
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    if not parts or re.sub(r"[\d\sa-z]", "", value):
        raise ValueError(f"not a time span: {value!r}")
    return float(sum(int(n) * _TIMESPAN_UNITS[unit] for n, unit in parts))


def verifiable_unit(
    tmp_path: Path, text: str | None = None, socket_text: str | None = None
) -> Path:
    """A copy of the unit whose ExecStart and ExecReload name the installed console script.

    verify checks that the commands' binaries exist, and /opt/prefork/venv is
    not there on a test machine, so only that path is replaced: everything else
    is checked as shipped. The socket unit is copied beside it (a socket unit
    verifies only with its service there). verify does not resolve User=/Group= (systemd looks the
    user up when the service starts), so the dedicated user needs no change
    and the test creates none.
    """
    prefork_bin = find_tool("prefork")
    if prefork_bin is None:
        pytest.fail("the prefork console script is not installed (pip install -e .)")
    text = UNIT.read_text() if text is None else text
    assert text.count(f"ExecStart={UNIT_EXEC_PATH} ") == 1, "unit's ExecStart path changed"
    assert text.count(f"ExecReload={UNIT_EXEC_PATH} ") == 1, "unit's check path changed"
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir()
    copy = unit_dir / UNIT.name  # verify wants a valid unit name
    copy.write_text(text.replace(f"={UNIT_EXEC_PATH} ", f"={prefork_bin} "))
    (unit_dir / SOCKET_UNIT.name).write_text(
        SOCKET_UNIT.read_text() if socket_text is None else socket_text
    )
    return copy


def verify_unit(analyze: str, unit: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run verify; return the process and every message about our unit.

    verify exits 0 on unknown keys and unparsable values (it only warns, and
    systemd would ignore the line), so any message naming the unit fails too.
    """
    proc = run([analyze, "verify", "--man=no", "--recursive-errors=no", str(unit)])
    messages = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.name in line]
    return proc, messages


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    proc, messages = verify_unit(analyze, verifiable_unit(tmp_path))
    assert proc.returncode == 0, report(proc)
    assert not messages, report(proc)


def test_unit_verify_catches_a_bad_line(tmp_path: Path) -> None:
    # The check above is only as good as its reading of verify's output.
    analyze = require_tool("systemd-analyze")
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd")
    _, messages = verify_unit(analyze, verifiable_unit(tmp_path, broken))
    assert any("mixd" in m for m in messages), messages


def test_unit_hardening_keeps_exposure_low(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = verifiable_unit(tmp_path)
    proc = run(
        [analyze, "security", "--offline=yes", f"--threshold={MAX_UNIT_EXPOSURE}", str(unit)]
    )
    assert proc.returncode == 0, report(proc)


def test_socket_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    socket_unit = verifiable_unit(tmp_path).with_name(SOCKET_UNIT.name)
    proc, messages = verify_unit(analyze, socket_unit)
    assert proc.returncode == 0, report(proc)
    assert not messages, report(proc)


def test_socket_unit_verify_catches_a_bad_line(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    broken = SOCKET_UNIT.read_text().replace("Backlog=256", "Backlog=lots")
    socket_unit = verifiable_unit(tmp_path, socket_text=broken).with_name(SOCKET_UNIT.name)
    _, messages = verify_unit(analyze, socket_unit)
    assert any("lots" in m for m in messages), messages


def test_socket_unit_listens_where_the_example_config_binds() -> None:
    socket_keys = unit_section_lists(SOCKET_UNIT.read_text(), "[Socket]")
    cfg = example_config()
    assert socket_keys["ListenStream"] == [f"{cfg.ip}:{cfg.port}"]
    assert socket_keys["Backlog"] == [str(cfg.backlog)]
    assert socket_keys["Accept"] == ["no"]  # one shared socket, not a service per connection


def test_unit_notifies_and_checks_before_reloading() -> None:
    lists = unit_section_lists(UNIT.read_text())
    service = unit_service_section(UNIT.read_text())
    # prefork speaks sd_notify from the master, the main process.
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    # The check runs the same app and flags as ExecStart, then the HUP: in that order.
    start_args = service["ExecStart"].removeprefix(f"{UNIT_EXEC_PATH} run ")
    assert lists["ExecReload"] == [
        f"{UNIT_EXEC_PATH} check {start_args}",
        "/bin/kill -HUP $MAINPID",
    ]


def test_unit_reload_check_passes_on_the_shipped_example() -> None:
    # The ExecReload check, with the example app and config, as an operator's
    # first `systemctl reload` would run it.
    check = unit_section_lists(UNIT.read_text())["ExecReload"][0].split()
    assert check[1:3] == ["check", "app:handle"]
    args = [a if a != "/etc/prefork/prefork.toml" else str(EXAMPLE_TOML) for a in check[2:]]
    proc = subprocess.run(
        [sys.executable, "-m", "prefork", "check", *args],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=VALIDATOR_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, report(proc)
    assert "# would serve app:handle" in proc.stdout


def test_unit_signals_match_the_contract() -> None:
    service = unit_service_section(UNIT.read_text())
    # API.md: SIGHUP reloads, SIGTERM stops gracefully.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    # Only the master gets SIGTERM; it drains and stops its own workers.
    assert service["KillMode"] == "mixed"
    assert service["User"] not in ("", "root", "0")
    assert service["ExecStart"].startswith(f"{UNIT_EXEC_PATH} run ")


def test_unit_stop_timeout_exceeds_graceful_timeout() -> None:
    service = unit_service_section(UNIT.read_text())
    stop_timeout = timespan_seconds(service["TimeoutStopSec"])
    assert stop_timeout > example_config().graceful_timeout


# --- the example config ------------------------------------------------------


def test_example_toml_builds_a_config() -> None:
    cfg = example_config()
    assert cfg.graceful_timeout > 0


# "binds" is the CLI's repeated -b, held in the config but not a file key of
# API.md; everything else must be shown (set, or commented out) in the example.
DOCUMENTED_KEYS = sorted(set(DEFAULTS) - {"binds"})


@pytest.mark.parametrize("key", DOCUMENTED_KEYS)
def test_example_toml_shows_every_key(key: str) -> None:
    text = EXAMPLE_TOML.read_text()
    as_line = re.search(rf"^#?\s*{key}\s*=", text, re.MULTILINE)
    as_table = re.search(rf"^#?\s*\[{key}[.\]]", text, re.MULTILINE)
    assert as_line or as_table, f"deploy/example.toml does not show {key}"


def test_example_app_answers_healthz() -> None:
    spec = importlib.util.spec_from_file_location("deploy_example_app", EXAMPLE_APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    content, status, headers = module.handle("GET", "/healthz", {}, {}, b"", None)
    assert status == 200
    assert content
    assert headers["cache-control"] == "no-store"


# --- container file ----------------------------------------------------------


def test_containerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = require_tool("hadolint")
    # An explicit config keeps a user's or the repository's hadolint.yaml out;
    # style is the lowest level, so every finding fails, and inline
    # "hadolint ignore" comments are not honoured.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    proc = run(
        [
            hadolint,
            "--no-color",
            "--disable-ignore-pragma",
            "--config",
            str(config),
            str(CONTAINERFILE),
        ]
    )
    assert proc.returncode == 0, report(proc)


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def containerfile_cmd() -> list[str]:
    cmds = [args for word, args in containerfile_instructions() if word == "CMD"]
    cmd = json.loads(cmds[-1])  # exec form is a JSON array; shell form fails here
    assert isinstance(cmd, list)
    return [str(part) for part in cmd]


def test_containerfile_runs_prefork_as_non_root_and_stops_with_sigterm() -> None:
    instructions = containerfile_instructions()
    users = [args for word, args in instructions if word == "USER"]
    assert users, "no USER: the server would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert [args for word, args in instructions if word == "STOPSIGNAL"] == ["SIGTERM"]
    base = [args for word, args in instructions if word == "FROM"][-1]
    assert base.startswith("python:3.11-slim")
    cmd = containerfile_cmd()
    assert cmd[:2] == ["prefork", "run"]
    # Inside the container the server must listen on all interfaces.
    assert cmd[cmd.index("-b") + 1] == "0.0.0.0:8080"


# --- Kubernetes --------------------------------------------------------------


def kubernetes_validate(path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run kubernetes-validate in strict mode; return the process and its non-pass lines.

    A document whose kind has no schema only gets a WARN and exit 0, so
    anything but a "passed" line counts as a failure.
    """
    tool = require_tool("kubernetes-validate")
    proc = run([tool, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(path)])
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc, [line for line in lines if line.strip() and " passed " not in line]


def load_manifests() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip(
        "yaml", reason=f"PyYAML comes with kubernetes-validate; {INSTALL_HINT}"
    )
    docs: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_manifests_exist() -> None:
    names = {path.name for path in MANIFESTS}
    assert {"configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"} <= names


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[path.name for path in MANIFESTS])
def test_manifest_passes_kubernetes_validate(manifest: Path) -> None:
    proc, problems = kubernetes_validate(manifest)
    assert proc.returncode == 0, report(proc)
    assert not problems, report(proc)
    assert " passed " in proc.stdout + proc.stderr, report(proc)


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    text = (KUBERNETES / "deployment.yaml").read_text()
    broken.write_text(text.replace("revisionHistoryLimit:", "revisionHistoryLimt:"))
    proc, problems = kubernetes_validate(broken)
    assert proc.returncode != 0
    assert problems


def prefork_container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "prefork")


def prestop_pause_seconds(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # the kubelet's own sleep action
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def configmap_config(docs: dict[str, dict[str, Any]]) -> Config:
    return Config.build(tomllib.loads(docs["ConfigMap"]["data"]["prefork.toml"]))


def test_configmap_toml_builds_a_config() -> None:
    cfg = configmap_config(load_manifests())
    # Above the 60 s idle timeout of the usual balancers in front of a cluster.
    assert cfg.keepalive_idle_timeout > 60


def test_grace_period_exceeds_prestop_plus_graceful_timeout() -> None:
    docs = load_manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    pause = prestop_pause_seconds(prefork_container(docs))
    assert pause > 0
    for cfg in (example_config(), configmap_config(docs)):
        assert pod["terminationGracePeriodSeconds"] > pause + cfg.graceful_timeout


def test_deployment_serves_many_replicas_with_probes() -> None:
    docs = load_manifests()
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    container = prefork_container(docs)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    # The probes and the Service reach the port the image's command binds.
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    cmd = containerfile_cmd()
    assert cmd[cmd.index("-b") + 1].rsplit(":", 1)[1] == str(port["containerPort"])
    service = docs["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == deployment["spec"]["selector"]
