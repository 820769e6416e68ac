"""The internal exception hierarchy.

    PreforkError
      ConfigError        bad key, bad value, unreadable file
        TLSError         certificate or key that will not load
      BindError          the listen socket cannot be created
      ProtocolError      bad or too-slow request; carries .status
      PeerGone           EOF, reset or broken pipe mid-exchange

Only ``server.py`` turns these into the public ``(value, err)`` returns.
"""

from __future__ import annotations

# The exit codes of ``prefork run`` (and of Server.exit_code), in one place.
EXIT_OK = 0
EXIT_FAILURE = 1  # the server could not start or stopped on an error
EXIT_USAGE = 2  # a bad flag, config value or MODULE:ATTR


class PreforkError(Exception):
    """Base of every error prefork raises on purpose."""


class ConfigError(PreforkError):
    """A config key or value is wrong, or a file it names cannot be read."""


class TLSError(ConfigError):
    """A certificate or key that will not load."""


class BindError(PreforkError):
    """The listen socket cannot be created."""


class ProtocolError(PreforkError):
    """A request that must be refused; ``status`` is the response code to send.

    ``method`` is the refused request's method when its request line was read
    (the reader fills it in), else None: the answer to a HEAD request carries
    no body, whatever its status (RFC 9110 §9.3.2).
    """

    def __init__(self, status: int, message: str, method: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.method = method


class PeerGone(PreforkError):
    """The peer went away (EOF, reset, broken pipe) or stopped reading."""
