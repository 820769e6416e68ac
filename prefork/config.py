"""Configuration: the defaults (docs/reference.md), validation, TOML loading and merging.

A :class:`Config` is immutable once built; handlers see it as ``ctx.cfg``,
readable both as attributes and as a mapping. Every error names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

from prefork.errors import ConfigError

LOG_LEVELS = ("debug", "access", "info", "warn", "error")
HTTP_BACKENDS = ("auto", "httptools", "h11")
INTERFACES = ("auto", "native", "asgi", "wsgi")
LIFESPAN_MODES = ("auto", "on", "off")
ACCESS_LOG_FORMATS = ("text", "json")

# Content types compressed by default: text and the structured text formats.
# Images, archives, fonts that are already compressed and text/event-stream
# (which must never be buffered) are left out on purpose.
DEFAULT_COMPRESSIBLE_TYPES = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/x-www-form-urlencoded",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
)

DEFAULT_COMPRESSION: dict[str, Any] = {
    "enabled": True,
    "min_size": 1024,
    "level": 6,
    "types": list(DEFAULT_COMPRESSIBLE_TYPES),
    # Bytes of compressed bodies a worker remembers (0 = none); see compression.BodyCache.
    "cache_bytes": 16 * 1024 * 1024,
}

DEFAULTS: dict[str, Any] = {
    "ip": "127.0.0.1",
    "port": 8080,
    "backlog": 256,
    "workers": 1,
    "connection_limit": 64,
    "requests_per_connection": 512,
    "max_body_size": 5 * 1024 * 1024,
    "request_line_limit": 8192,
    "keepalive_idle_timeout": 15,
    "request_header_timeout": 10,
    "request_body_timeout": 30,
    "tls_handshake_timeout": 10,
    "graceful_timeout": 30,
    "response_write_timeout": 30,
    "max_header_count": 100,
    "worker_timeout": 30,
    "ssl": None,
    "compression": DEFAULT_COMPRESSION,
    "log_level": "access",
    "log_headers": [],
    "redis_url": None,
    "http": "auto",
    "max_requests": 0,
    "max_requests_jitter": 0,
    # Extra binds beyond ip:port, as "HOST:PORT" strings (the CLI's repeated -b).
    "binds": [],
    # App interfaces (docs/reference.md, "App interfaces").
    "interface": "auto",
    "factory": False,
    "lifespan": "auto",
    "root_path": "",
    "wsgi_threads": 16,
    "ws_max_message_size": 16 * 1024 * 1024,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "ws_per_message_deflate": True,
    # Behind proxies; observability.
    "forwarded_allow_ips": ["127.0.0.1", "::1"],
    "proxy_protocol": False,
    "metrics_bind": None,
    "access_log_format": "text",
}

_POSITIVE_INTS = (
    "backlog",
    "workers",
    "connection_limit",
    "requests_per_connection",
    "max_body_size",
    "request_line_limit",
    "max_header_count",
    "wsgi_threads",
    "ws_max_message_size",
)
_NON_NEGATIVE_INTS = ("max_requests", "max_requests_jitter")
_TIMEOUTS = (
    "keepalive_idle_timeout",
    "request_header_timeout",
    "request_body_timeout",
    "tls_handshake_timeout",
    "graceful_timeout",
    "response_write_timeout",
    "worker_timeout",
)
_COMPRESSION_KEYS = frozenset(DEFAULT_COMPRESSION)
# Seconds where 0 means "off".
_OPTIONAL_INTERVALS = ("ws_ping_interval", "ws_ping_timeout")
_BOOLS = ("factory", "ws_per_message_deflate", "proxy_protocol")
_CHOICES = {
    "http": HTTP_BACKENDS,
    "interface": INTERFACES,
    "lifespan": LIFESPAN_MODES,
    "access_log_format": ACCESS_LOG_FORMATS,
}


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` -> ``(host, port)``.

    The one reading of an address everywhere (``-b``, ``binds``,
    ``metrics_bind``): no host means 127.0.0.1, as the ``ip`` default, so a
    short form never listens on every interface by surprise. ``what`` names
    the flag or key in the error.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535 or "[" in host or "]" in host:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT with a port from 0 to 65535")
    return host or "127.0.0.1", int(port)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(key: str, value: object, minimum: int) -> int:
    if not _is_int(value):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    assert isinstance(value, int)
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
    return value


def _check_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _check_timeout(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be > 0 seconds (a finite number), got {value}")
    return float(value)


def _check_interval(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}: must be >= 0 seconds (0 = off), got {value}")
    return float(value)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    text = _check_str(key, value).lower()
    if text not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return text


def _check_compression(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"compression: expected a table, got {value!r}")
    unknown = sorted(set(value) - _COMPRESSION_KEYS)
    if unknown:
        raise ConfigError(f"compression.{unknown[0]}: unknown key")
    merged = {**DEFAULT_COMPRESSION, **value}
    if not isinstance(merged["enabled"], bool):
        raise ConfigError(f"compression.enabled: expected true or false, got {merged['enabled']!r}")
    _check_int("compression.min_size", merged["min_size"], 0)
    _check_int("compression.cache_bytes", merged["cache_bytes"], 0)
    level = _check_int("compression.level", merged["level"], 1)
    if level > 9:
        raise ConfigError(f"compression.level: must be 1 to 9, got {level}")
    types = merged["types"]
    if not isinstance(types, list | tuple) or not all(isinstance(t, str) for t in types):
        raise ConfigError(f"compression.types: expected a list of content types, got {types!r}")
    merged["types"] = [t.strip().lower() for t in types]
    return merged


def _check_ssl(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"ssl: expected a table, got {value!r}")
    # The detailed checks (files, keys, sub-options) live in tls.py so that the
    # message can name the file; here only the shape is checked.
    if "default" not in value:
        raise ConfigError("ssl.default: required (the certificate used when no host name matches)")
    return copy.deepcopy(dict(value))


def validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key of a full config mapping; return a normalised copy."""
    out: dict[str, Any] = {}
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key")
    for key, default in DEFAULTS.items():
        value = raw.get(key, default)
        if key in _POSITIVE_INTS:
            value = _check_int(key, value, 1)
        elif key in _NON_NEGATIVE_INTS:
            value = _check_int(key, value, 0)
        elif key in _TIMEOUTS:
            value = _check_timeout(key, value)
        elif key == "port":
            value = _check_int(key, value, 0)
            if value > 65535:
                raise ConfigError(f"port: must be 0 to 65535, got {value}")
        elif key == "ip":
            value = _check_str(key, value)
        elif key == "log_level":
            value = _check_str(key, value).lower()
            if value == "warning":
                value = "warn"
            if value not in LOG_LEVELS:
                raise ConfigError(
                    f"log_level: must be one of {', '.join(LOG_LEVELS)}; got {value!r}"
                )
        elif key in _CHOICES:
            value = _check_choice(key, value, _CHOICES[key])
        elif key in _OPTIONAL_INTERVALS:
            value = _check_interval(key, value)
        elif key in _BOOLS:
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false, got {value!r}")
        elif key == "root_path":
            value = _check_str(key, value).rstrip("/")
            if value and not value.startswith("/"):
                raise ConfigError(f"root_path: must start with '/', got {value!r}")
        elif key == "forwarded_allow_ips":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key}: expected a list of addresses or CIDRs, got {value!r}")
            value = _check_networks(key, value)
        elif key == "metrics_bind":
            if value is not None:
                value = _check_str(key, value)
                parse_host_port(value, key)
        elif key in ("log_headers", "binds"):
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
            value = [v.lower() for v in value] if key == "log_headers" else list(value)
            if key == "binds":
                for address in value:
                    parse_host_port(address, key)
        elif key == "redis_url":
            if value is not None:
                value = _check_str(key, value)
        elif key == "compression":
            value = _check_compression(value)
        elif key == "ssl":
            value = _check_ssl(value)
        out[key] = value
    return out


def _check_networks(key: str, values: list[str] | tuple[str, ...]) -> list[str]:
    """Addresses and CIDR ranges (or ``*``), each checked by ``ipaddress``."""
    import ipaddress

    out = []
    for item in values:
        item = item.strip()
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"{key}: {item!r} is not an address or CIDR range") from None
        out.append(item)
    return out


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; every error names the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    return data


ENV_PREFIX = "PREFORK_"
# Keys whose value may be given bare (PREFORK_IP=0.0.0.0): the string keys, and
# forwarded_allow_ips, whose comma-separated form validate() reads.
_BARE_STRING_KEYS = frozenset(
    key for key, default in DEFAULTS.items() if isinstance(default, str)
) | {"redis_url", "metrics_bind", "forwarded_allow_ips"}
# Keys that may be unset (None); an empty variable unsets them.
_OPTIONAL_KEYS = frozenset(key for key, default in DEFAULTS.items() if default is None)


def from_environ(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The config keys set by ``PREFORK_<KEY>`` variables, and the unknown ``PREFORK_`` names.

    A value is read as a TOML value (``4``, ``true``, ``["10.0.0.0/8"]``,
    ``{ level = 9 }``); a string key also takes a bare string
    (``PREFORK_IP=0.0.0.0``) unless it starts with a quote. An empty value
    unsets a key that may be unset (``redis_url``, ``ssl``, ``metrics_bind``).
    Raises ConfigError naming the variable for a value that does not parse or
    does not validate.
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in DEFAULTS or name != ENV_PREFIX + key.upper():
            unknown.append(name)
            continue
        text = environ[name]
        try:
            out[key] = _env_value(key, text)
            validate({key: out[key]})  # the defaults are valid: an error is this key's
        except ConfigError as exc:
            raise ConfigError(f"environment variable {name}={text!r}: {exc}") from None
    return out, unknown


def _env_value(key: str, text: str) -> Any:
    stripped = text.strip()
    if not stripped and key in _OPTIONAL_KEYS:
        return None
    toml_form = stripped.startswith(('"', "'")) or (
        key == "forwarded_allow_ips" and stripped.startswith("[")
    )
    if key in _BARE_STRING_KEYS and not toml_form:
        return stripped
    try:
        return tomllib.loads(f"value = {stripped}")["value"]
    except tomllib.TOMLDecodeError:
        raise ConfigError("not a TOML value (quote strings, [a, b] for lists)") from None


def layered(
    file_cfg: Mapping[str, Any], env_cfg: Mapping[str, Any], flags: Mapping[str, Any]
) -> dict[str, Any]:
    """The keys of every source, later ones winning: file < environment < flags."""
    return merged_flags(merged(file_cfg, env_cfg), flags)


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``; the ``compression`` table merges key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if (
            key == "compression"
            and isinstance(value, Mapping)
            and isinstance(out.get(key), Mapping)
        ):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def merged_flags(file_cfg: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The config file's keys with the command line's on top, at start-up and on SIGHUP.

    ``--certfile``/``--keyfile`` set ``ssl.default`` only: the file's other
    ``ssl`` keys (hosts, options) are kept, as the file has them now.
    """
    ssl_flag = flags.get("ssl")
    if isinstance(ssl_flag, Mapping) and isinstance(file_cfg.get("ssl"), Mapping):
        flags = {**flags, "ssl": {**file_cfg["ssl"], **ssl_flag}}
    return merged(file_cfg, flags)


@dataclasses.dataclass(frozen=True, slots=True)
class Config(Mapping[str, Any]):
    """A validated, read-only config; readable as ``cfg.port`` and ``cfg["port"]``."""

    ip: str
    port: int
    backlog: int
    workers: int
    connection_limit: int
    requests_per_connection: int
    max_body_size: int
    request_line_limit: int
    keepalive_idle_timeout: float
    request_header_timeout: float
    request_body_timeout: float
    tls_handshake_timeout: float
    graceful_timeout: float
    response_write_timeout: float
    max_header_count: int
    worker_timeout: float
    ssl: Mapping[str, Any] | None
    compression: Mapping[str, Any]
    log_level: str
    log_headers: tuple[str, ...]
    redis_url: str | None
    http: str
    max_requests: int
    max_requests_jitter: int
    binds: tuple[str, ...]
    interface: str
    factory: bool
    lifespan: str
    root_path: str
    wsgi_threads: int
    ws_max_message_size: int
    ws_ping_interval: float
    ws_ping_timeout: float
    ws_per_message_deflate: bool
    forwarded_allow_ips: tuple[str, ...]
    proxy_protocol: bool
    metrics_bind: str | None
    access_log_format: str

    @classmethod
    def build(cls, raw: Mapping[str, Any] | None = None) -> Config:
        """Validate ``raw`` (missing keys take their defaults) into a Config."""
        values = validate(raw or {})
        values["log_headers"] = tuple(values["log_headers"])
        values["binds"] = tuple(values["binds"])
        values["forwarded_allow_ips"] = tuple(values["forwarded_allow_ips"])
        values["compression"] = _freeze(values["compression"])
        values["ssl"] = _freeze(values["ssl"]) if values["ssl"] is not None else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable deep copy (for merging a new config)."""
        return {f.name: _thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELD_NAMES)

    def __len__(self) -> int:
        return len(_FIELD_NAMES)


class FrozenDict(Mapping[str, Any]):
    """A read-only mapping for nested config tables."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))
