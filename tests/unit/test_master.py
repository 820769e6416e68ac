"""prefork.master.arbiter: the master's decisions, with no process and no socket.

Before any fork: SIGTTIN/SIGTTOU, re-reading the config on SIGHUP and keeping
the running generation when that fails. Supervision, on records of imaginary
workers (``Master._kill`` replaced): boot failures, crashes, replacing and
recycling workers, reloads that fail or time out, a SIGHUP during a reload.
The worker side (its accept loop, its watchdog verdict) is in test_worker.py.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork import log
from prefork.config import Config
from prefork.master.arbiter import (
    MASTER_BOOT_FAILED,
    RESPAWN_BACKOFF_MIN_S,
    Master,
)
from prefork.master.reload import Reload
from prefork.master.workers import WorkerRecord, WorkerState
from tests.unit.conftest import record


def handle(method: str, query: str, args: Any, headers: Any, body: bytes, ctx: Any) -> Any:
    return "ok", 200, None


# -- the master's decisions, before any fork -----------------------------------


@pytest.fixture
def master_log() -> Iterator[list[str]]:
    """Messages logged on prefork.master.arbiter (which does not propagate once log.setup ran)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(log.MASTER)
    collector = Collect(level=logging.DEBUG)
    old_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    yield messages
    logger.removeHandler(collector)
    logger.setLevel(old_level)


def test_master_init_only_stores(tmp_path: Path) -> None:
    cfg = Config.build({"port": 0, "workers": 3})
    master = Master(cfg, "app:handle", pidfile=str(tmp_path / "pid"))
    assert master.listeners == []
    assert master.port == 0
    assert not (tmp_path / "pid").exists()


def test_ttin_and_ttou_never_below_one(master_log: list[str]) -> None:
    master = Master(Config.build({"port": 0, "workers": 2}), handle)
    master.handle_ttin()
    assert master._target == 3
    for _ in range(5):
        master.handle_ttou()
    assert master._target == 1
    assert "SIGTTOU: already at one worker" in master_log


def test_reload_rereads_the_file_and_keeps_the_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text("workers = 2\ngraceful_timeout = 3\nport = 9999\n")
    overrides = {"port": 0, "workers": 5}
    master = Master(
        Config.build({"port": 0}), "app:handle", config_file=str(conf), overrides=overrides
    )
    conf.write_text("workers = 2\ngraceful_timeout = 7\n")
    cfg = master._reread_config()
    assert cfg.graceful_timeout == 7  # from the file, re-read
    assert cfg.workers == 5  # the command line still wins
    assert cfg.port == 0


def test_reload_without_a_file_keeps_the_config() -> None:
    cfg = Config.build({"port": 0})
    assert Master(cfg, "app:handle")._reread_config() is cfg


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("workers = [", "invalid TOML"),
        ("workers = 0\n", "workers: must be >= 1"),
        ("no_such_key = 1\n", "no_such_key: unknown config key"),
        ('[ssl.default]\ncert = "/nonexistent/c.pem"\nkey = "/nonexistent/k.pem"\n', "c.pem"),
    ],
    ids=["toml", "value", "key", "tls-file"],
)
def test_broken_reload_keeps_the_generation(
    tmp_path: Path, master_log: list[str], content: str, reason: str
) -> None:
    conf = tmp_path / "prefork.toml"
    conf.write_text(content)
    master = Master(Config.build({"port": 0}), "app:handle", config_file=str(conf))
    master._generation = 1
    master.handle_hup()  # must not fork: it fails before
    assert master._reload is None
    assert master._generation == 1
    failed = [m for m in master_log if m.startswith("reload failed")]
    assert len(failed) == 1
    assert reason in failed[0]
    assert "generation 1 keeps serving" in failed[0]


# -- supervision decisions, on records of imaginary workers --------------------


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Iterator[Master]:
    master = Master(Config.build({"port": 0, "workers": 2}), "app:handle")
    master._generation = master._last_generation = 1
    master.signals_sent = []  # type: ignore[attr-defined]

    def fake_kill(worker: WorkerRecord, signum: int) -> None:
        master.signals_sent.append((worker.number, signum))  # type: ignore[attr-defined]

    monkeypatch.setattr(master, "_kill", fake_kill)
    root = logging.getLogger(log.ROOT)
    level = root.level
    yield master
    root.setLevel(level)  # a reload sets the level of every prefork logger


EXIT_3 = 3 << 8


def test_boot_failure_before_anything_served_stops_the_master(
    master: Master, master_log: list[str]
) -> None:
    booting = record(2)
    master._workers[booting.pid] = booting
    master._on_exit(record(1), EXIT_3)
    assert master._exit_code == MASTER_BOOT_FAILED
    assert master._stopping is not None
    assert master.signals_sent == [(2, signal.SIGKILL)]  # type: ignore[attr-defined]
    message = "worker 1 (pid 10001, gen 1) failed to boot (exit code 3); stopping"
    assert message in master_log
    assert master.error == message  # for server.serve() to return as its error


def test_boot_failure_while_others_serve_retries_after_a_backoff(
    master: Master, master_log: list[str]
) -> None:
    serving = record(2, WorkerState.SERVING)
    master._workers[serving.pid] = serving
    master._ever_ready = True
    master._on_exit(record(1), EXIT_3)
    assert master._stopping is None
    assert master._respawn_at > 0
    assert master._respawn_delay == 2 * RESPAWN_BACKOFF_MIN_S
    assert any("retrying in 1s" in m for m in master_log)


def test_crash_of_a_serving_worker_is_replaced_not_fatal(
    master: Master, master_log: list[str]
) -> None:
    master._ever_ready = True
    master._on_exit(record(1, WorkerState.SERVING), signal.SIGSEGV)
    assert master._stopping is None
    assert master._respawn_at == 0
    assert "worker 1 (pid 10001, gen 1) died (signal SIGSEGV)" in master_log


def test_replacement_ready_stops_the_old_worker(master: Master) -> None:
    old, new = record(1, WorkerState.SERVING), record(1)
    new.pid += 100
    new.replaces, old.replaced_by = old, new
    master._workers.update({old.pid: old, new.pid: new})
    master._on_ready(new)
    assert new.state is WorkerState.SERVING
    assert old.state is WorkerState.DRAINING
    assert master.signals_sent == [(1, signal.SIGTERM)]  # type: ignore[attr-defined]


def test_failed_recycling_keeps_the_old_worker(master: Master) -> None:
    old, new = record(1, WorkerState.SERVING), record(1)
    old.recycle = True
    new.pid += 100
    new.replaces, old.replaced_by = old, new
    master._workers[old.pid] = old
    master._ever_ready = True
    master._on_exit(new, EXIT_3)
    assert master._stopping is None
    assert old.state is WorkerState.SERVING
    assert old.replaced_by is None
    assert not old.wants_replacement(time.monotonic())  # not before the back-off
    assert old.wants_replacement(old.recycle_retry_at)


def test_reload_whose_worker_fails_to_boot_is_abandoned(master: Master) -> None:
    serving = record(1, WorkerState.SERVING)
    master._workers[serving.pid] = serving
    master._ever_ready = True
    failed, booting = record(1), record(2)
    failed.generation = booting.generation = 2
    booting.pid += 100
    master._workers[booting.pid] = booting
    master._reload = Reload(2, master.cfg, None, time.monotonic() + 30, {failed.pid, booting.pid})
    master._on_exit(failed, EXIT_3)
    assert master._reload is None
    assert master._generation == 1
    assert master.signals_sent == [(2, signal.SIGKILL)]  # type: ignore[attr-defined]
    assert serving.state is WorkerState.SERVING


def test_reload_not_ready_in_time_is_abandoned(master: Master, master_log: list[str]) -> None:
    booting = record(1)
    booting.generation = 2
    master._workers[booting.pid] = booting
    master._reload = Reload(2, master.cfg, None, time.monotonic() - 1, {booting.pid})
    master._check_timeouts()
    assert master._reload is None
    assert master.signals_sent == [(1, signal.SIGKILL)]  # type: ignore[attr-defined]
    assert any("generation 2 not ready within 30s" in m for m in master_log)


def test_hup_during_a_reload_is_queued(master: Master, master_log: list[str]) -> None:
    master._reload = Reload(2, master.cfg, None, time.monotonic() + 30, {12345})
    master.handle_hup()
    assert master._reload_again
    assert "SIGHUP: queued until generation 2 is ready" in master_log


def test_ttou_while_a_recycling_replacement_boots_does_not_respawn_it(
    master: Master, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker 2 reached max_requests; its replacement is booting when TTOU arrives.
    # The replacement is the one stopped; its old worker must not then ask for
    # another replacement (fork, TERM, fork... as long as it lives).
    spawned: list[WorkerRecord] = []

    def fake_spawn(number: int, generation: int, *args: Any, **kwargs: Any) -> WorkerRecord:
        worker = record(number)
        worker.pid += 1000 + len(spawned)
        spawned.append(worker)
        master._workers[worker.pid] = worker
        return worker

    monkeypatch.setattr(master, "_spawn", fake_spawn)
    master._ever_ready = True
    first, old = record(1, WorkerState.SERVING), record(2, WorkerState.SERVING)
    new = record(2)
    new.pid += 100
    old.recycle = True
    new.replaces, old.replaced_by = old, new
    master._workers.update({first.pid: first, old.pid: old, new.pid: new})
    master.handle_ttou()
    master._manage_workers()
    assert new.state is WorkerState.DRAINING
    for _ in range(3):  # the stopped workers exit, one supervision pass after another
        for pid in [p for p, w in master._workers.items() if w.state is WorkerState.DRAINING]:
            master._on_exit(master._workers.pop(pid), signal.SIGTERM)
        master._manage_workers()
    assert spawned == []
    assert list(master._workers.values()) == [first]
