"""The public calls: ``new``, ``Server.configure``, ``Server.serve``, ``Server.process_request``.

This is the one place where prefork's exceptions become the ``(value, err)``
returns (docs/reference.md, "From Python").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from prefork import log
from prefork._compiled import BUILD
from prefork._types import Action, Handler
from prefork.config import Config, merged
from prefork.errors import EXIT_FAILURE, EXIT_OK, ConfigError, PreforkError

logger = logging.getLogger(log.MASTER)


def _load_tls(cfg: Config) -> None:
    if cfg.ssl is not None:
        from prefork.tls import load_tls

        load_tls(cfg.ssl)


class Server:
    """A configured server; ``serve()`` runs the master and its workers."""

    def __init__(
        self,
        cfg: Config,
        app: Handler | str,
        *,
        config_file: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        pidfile: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.config_file = config_file
        self.overrides = dict(overrides or {})
        self.pidfile = pidfile
        self.exit_code = EXIT_OK
        self._master: Any = None

    @property
    def port(self) -> int:
        """The bound port once ``serve()`` has bound (useful with ``port = 0``)."""
        master = self._master
        if master is not None and getattr(master, "port", None):
            return int(master.port)
        return self.cfg.port

    def configure(self, config: Mapping[str, Any]) -> tuple[bool | None, str | None]:
        """Merge ``config`` into the current config, validate it and pre-parse TLS.

        Args:
            config: config keys to change (docs/reference.md, "Configuration").

        Returns:
            ``(True, None)``, or ``(None, err)`` naming the bad key or file; on
            error the current config is kept.
        """
        try:
            if not isinstance(config, Mapping):
                raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
            cfg = Config.build(merged(self.cfg.to_dict(), config))
            _load_tls(cfg)
        except PreforkError as exc:
            return None, str(exc)
        self.cfg = cfg
        self.overrides.update(config)
        log.set_level(cfg.log_level)
        return True, None

    def serve(self) -> tuple[None, str | None]:
        """Bind, fork the workers and supervise them until stopped.

        Blocks. Returns ``(None, None)`` after a clean shutdown, or ``(None, err)``
        when the server cannot start (bind failure, a worker that cannot boot).
        """
        from prefork.master.arbiter import Master

        if threading.current_thread() is not threading.main_thread():
            # The master lives on signals (worker exits, reload, stop), and
            # Python delivers them to the main thread only.
            self.exit_code = EXIT_FAILURE
            return None, "serve() must be called from the main thread (it handles signals)"
        log.setup(self.cfg.log_level)
        logger.info("starting prefork (%s build)", BUILD)
        try:
            self._master = Master(
                self.cfg,
                self.app,
                config_file=self.config_file,
                overrides=self.overrides,
                pidfile=self.pidfile,
            )
            code = self._master.run()
        except PreforkError as exc:
            self.exit_code = EXIT_FAILURE
            return None, str(exc)
        self.exit_code = code
        if code != EXIT_OK:
            reason = getattr(self._master, "error", None)
            return None, reason or f"server stopped with exit code {code}"
        return None, None

    async def process_request(
        self, client: Any, client_ip: str, count: int, redis_module: Any
    ) -> tuple[Action | None, str | None]:
        """Read one request from ``client``, call the handler, write the response.

        Args:
            client: the connection the server made for an accepted socket.
            client_ip: the peer's address, for the handler and the access log.
            count: requests already handled on this connection.
            redis_module: the worker's Redis client or None, handed to the handler.

        Returns:
            ``("keep-alive", None)``, ``("close", None)``, or ``(None, err)`` on a
            fatal read/write error or malformed input (after the error response).
        """
        from prefork.apps.native import exchange

        state = client.shared
        try:
            action = await exchange(client, state, client_ip, count, redis_module)
        except PreforkError as exc:
            return None, str(exc)
        return action, None


def new(config: Mapping[str, Any] | None, handle: Handler) -> tuple[Server | None, str | None]:
    """Build a server for ``handle`` from a config mapping.

    Args:
        config: config keys (docs/reference.md); missing keys take their defaults.
        handle: the handler, ``def handle(method, query, args, headers, body, ctx)``
            or ``async def``; or a ``"MODULE:ATTR"`` string imported by each worker.

    Returns:
        ``(server, None)``, or ``(None, err)`` for a bad config or an unreadable
        TLS file.
    """
    try:
        if not callable(handle) and not isinstance(handle, str):
            raise ConfigError(f"handle: expected a callable, got {type(handle).__name__}")
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
        cfg = Config.build(config or {})
        _load_tls(cfg)
    except PreforkError as exc:
        return None, str(exc)
    log.setup(cfg.log_level)
    return Server(cfg, handle), None
