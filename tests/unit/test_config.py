"""prefork.config: the defaults of API.md, validation, TOML loading, merging, read-only access."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from prefork.config import DEFAULT_COMPRESSION, DEFAULTS, Config, load_toml, merged, validate
from prefork.errors import ConfigError

# API.md's table, key by key.
API_DEFAULTS = {
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
    "log_level": "access",
    "log_headers": [],
    "redis_url": None,
    "http": "auto",
    "max_requests": 0,
    "max_requests_jitter": 0,
    "interface": "auto",
    "lifespan": "auto",
    "root_path": "",
    "ws_max_message_size": 16777216,
    "ws_ping_interval": 20,
    "ws_ping_timeout": 20,
    "ws_per_message_deflate": True,
    "forwarded_allow_ips": ["127.0.0.1", "::1"],
    "proxy_protocol": False,
    "metrics_bind": None,
    "access_log_format": "text",
}


@pytest.mark.parametrize(("key", "value"), API_DEFAULTS.items(), ids=list(API_DEFAULTS))
def test_defaults_are_api_md_table(key: str, value: Any) -> None:
    assert DEFAULTS[key] == value
    assert Config.build()[key] == (tuple(value) if isinstance(value, list) else value)


def test_compression_is_on_by_default() -> None:
    compression = Config.build().compression
    assert compression["enabled"] is True
    assert compression["min_size"] == 1024
    assert compression["level"] == 6
    assert "text/*" in compression["types"]
    assert "application/json" in compression["types"]


def test_every_key_is_an_api_key() -> None:
    # "binds" carries the CLI's extra -b addresses, "factory" the --factory flag;
    # "wsgi_threads" is API.md's with a default chosen by measurement.
    assert set(DEFAULTS) == {*API_DEFAULTS, "compression", "binds", "factory", "wsgi_threads"}


BAD_VALUES = [
    ("port", 70000, "port: must be 0 to 65535"),
    ("port", -1, "port: must be >= 0"),
    ("port", "80", "port: expected an integer"),
    ("port", 80.0, "port: expected an integer"),
    ("workers", 0, "workers: must be >= 1"),
    ("workers", True, "workers: expected an integer"),
    ("workers", None, "workers: expected an integer"),
    ("backlog", 0, "backlog: must be >= 1"),
    ("connection_limit", -3, "connection_limit: must be >= 1"),
    ("requests_per_connection", 0, "requests_per_connection: must be >= 1"),
    ("max_body_size", 0, "max_body_size: must be >= 1"),
    ("request_line_limit", "8k", "request_line_limit: expected an integer"),
    ("max_header_count", 0, "max_header_count: must be >= 1"),
    ("keepalive_idle_timeout", 0, "keepalive_idle_timeout: must be > 0"),
    ("request_header_timeout", -1, "request_header_timeout: must be > 0"),
    ("request_body_timeout", "30", "request_body_timeout: expected a number of seconds"),
    ("tls_handshake_timeout", False, "tls_handshake_timeout: expected a number of seconds"),
    ("graceful_timeout", None, "graceful_timeout: expected a number of seconds"),
    ("response_write_timeout", 0.0, "response_write_timeout: must be > 0"),
    ("worker_timeout", -0.5, "worker_timeout: must be > 0"),
    ("max_requests", -1, "max_requests: must be >= 0"),
    ("max_requests_jitter", 1.5, "max_requests_jitter: expected an integer"),
    ("ip", 127, "ip: expected a string"),
    ("log_level", "verbose", "log_level: must be one of debug, access, info, warn, error"),
    ("log_level", 10, "log_level: expected a string"),
    ("http", "h2", "http: must be one of auto, httptools, h11"),
    ("log_headers", "x-request-id", "log_headers: expected a list of strings"),
    ("log_headers", [1], "log_headers: expected a list of strings"),
    ("binds", "0.0.0.0:80", "binds: expected a list of strings"),
    ("binds", ["0.0.0.0:http"], "binds '0.0.0.0:http': expected HOST:PORT"),
    ("redis_url", 6379, "redis_url: expected a string"),
    ("compression", "gzip", "compression: expected a table"),
    ("compression", {"level": 0}, "compression.level: must be >= 1"),
    ("compression", {"level": 10}, "compression.level: must be 1 to 9"),
    ("compression", {"enabled": "yes"}, "compression.enabled: expected true or false"),
    ("compression", {"min_size": -1}, "compression.min_size: must be >= 0"),
    ("compression", {"types": "text/*"}, "compression.types: expected a list of content types"),
    ("compression", {"brotli": True}, "compression.brotli: unknown key"),
    ("ssl", "cert.pem", "ssl: expected a table"),
    ("ssl", {"hosts": {}}, "ssl.default: required"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    BAD_VALUES,
    ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES],
)
def test_bad_value_names_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.build({key: value})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^prot: unknown config key$"):
        Config.build({"prot": 80})


def test_nan_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="keepalive_idle_timeout"):
        Config.build({"keepalive_idle_timeout": math.nan})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("log_level", "WARNING", "warn"),
        ("log_level", "Info", "info"),
        ("http", "H11", "h11"),
        ("log_headers", ["X-Request-Id"], ("x-request-id",)),
        ("binds", ["0.0.0.0:81"], ("0.0.0.0:81",)),
        ("keepalive_idle_timeout", 5, 5.0),
        ("port", 0, 0),
        ("redis_url", "redis://localhost/0", "redis://localhost/0"),
    ],
    ids=[
        "warning-alias",
        "level-case",
        "http-case",
        "header-names",
        "binds",
        "int-s",
        "port-0",
        "redis",
    ],
)
def test_values_are_normalised(key: str, value: Any, expected: Any) -> None:
    assert Config.build({key: value})[key] == expected


def test_timeouts_are_floats() -> None:
    assert isinstance(Config.build({"graceful_timeout": 3}).graceful_timeout, float)


def test_partial_compression_table_keeps_the_other_defaults() -> None:
    compression = Config.build({"compression": {"level": 9, "types": ["Text/HTML"]}}).compression
    assert compression["level"] == 9
    assert compression["types"] == ("text/html",)
    assert compression["enabled"] is True
    assert compression["min_size"] == DEFAULT_COMPRESSION["min_size"]


def test_config_reads_as_attributes_and_as_mapping() -> None:
    cfg = Config.build({"workers": 3})
    assert cfg.workers == cfg["workers"] == 3
    assert cfg.get("workers") == 3
    assert "workers" in cfg
    assert set(cfg) == set(DEFAULTS)
    assert len(cfg) == len(DEFAULTS)
    assert dict(cfg)["port"] == 8080
    assert cfg.compression.level == cfg["compression"]["level"] == 6
    with pytest.raises(KeyError):
        cfg["nope"]
    with pytest.raises(AttributeError):
        _ = cfg.compression.nope


def test_config_is_read_only() -> None:
    cfg = Config.build({"ssl": None})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg["workers"] = 8  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.compression["level"] = 1  # type: ignore[index]
    assert isinstance(cfg.log_headers, tuple)
    assert isinstance(cfg.compression["types"], tuple)


def test_to_dict_is_a_mutable_copy_that_builds_the_same_config() -> None:
    cfg = Config.build({"log_headers": ["x-id"], "compression": {"level": 2}})
    raw = cfg.to_dict()
    assert Config.build(raw) == cfg
    raw["compression"]["level"] = 9
    raw["log_headers"].append("x-other")
    assert cfg.compression["level"] == 2
    assert cfg.log_headers == ("x-id",)


def test_validate_returns_a_normalised_copy() -> None:
    raw = {"log_level": "INFO"}
    out = validate(raw)
    assert out["log_level"] == "info"
    assert raw == {"log_level": "INFO"}
    assert set(out) == set(DEFAULTS)


def test_merged_merges_compression_key_by_key() -> None:
    base = {"workers": 1, "compression": {"enabled": True, "level": 6}}
    out = merged(base, {"workers": 4, "compression": {"level": 1}})
    assert out == {"workers": 4, "compression": {"enabled": True, "level": 1}}
    assert base == {"workers": 1, "compression": {"enabled": True, "level": 6}}


def test_merged_replaces_other_tables() -> None:
    ssl_a = {"default": {"cert": "a", "key": "a"}}
    ssl_b = {"default": {"cert": "b", "key": "b"}}
    assert merged({"ssl": ssl_a}, {"ssl": ssl_b}) == {"ssl": ssl_b}


# -- TOML files ---------------------------------------------------------------------


def test_load_toml_reads_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "prefork.toml"
    path.write_text('workers = 4\nport = 0\n[compression]\nlevel = 3\ntypes = ["text/*"]\n')
    data = load_toml(str(path))
    assert data == {"workers": 4, "port": 0, "compression": {"level": 3, "types": ["text/*"]}}
    assert Config.build(data).compression["level"] == 3


def test_load_toml_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^config file {path}: not found$"):
        load_toml(str(path))


def test_load_toml_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("workers = \n")
    with pytest.raises(ConfigError) as info:
        load_toml(str(path))
    assert str(info.value).startswith(f"config file {path}: invalid TOML: ")
    assert "\n" not in str(info.value)


def test_load_toml_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path}: "):
        load_toml(str(tmp_path))


def test_toml_with_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "prefork.toml"
    path.write_text("worker = 4\n")
    with pytest.raises(ConfigError, match=r"^worker: unknown config key$"):
        Config.build(load_toml(str(path)))


def test_compression_cache_bytes_defaults_and_is_checked() -> None:
    assert Config.build({}).compression["cache_bytes"] == 16 * 1024 * 1024
    assert Config.build({"compression": {"cache_bytes": 0}}).compression["cache_bytes"] == 0
    with pytest.raises(ConfigError, match=r"^compression\.cache_bytes: "):
        Config.build({"compression": {"cache_bytes": -1}})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("interface", "cgi", "interface: must be one of auto, native, asgi, wsgi"),
        ("lifespan", "maybe", "lifespan: must be one of auto, on, off"),
        ("access_log_format", "xml", "access_log_format: must be one of text, json"),
        ("ws_ping_interval", -1, "ws_ping_interval: must be >= 0"),
        ("ws_per_message_deflate", "yes", "ws_per_message_deflate: expected true or false"),
        ("proxy_protocol", 1, "proxy_protocol: expected true or false"),
        ("forwarded_allow_ips", ["10.0.0.0/33"], "forwarded_allow_ips: '10.0.0.0/33' is not"),
        ("metrics_bind", "localhost", "metrics_bind 'localhost': expected HOST:PORT"),
        ("root_path", "api", "root_path: must start with '/'"),
        ("wsgi_threads", 0, "wsgi_threads: must be >= 1"),
    ],
)
def test_new_keys_are_checked(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate({key: value})


def test_forwarded_allow_ips_accepts_cidrs_star_and_a_comma_list() -> None:
    assert validate({"forwarded_allow_ips": ["10.0.0.0/8", "*"]})["forwarded_allow_ips"] == [
        "10.0.0.0/8",
        "*",
    ]
    assert validate({"forwarded_allow_ips": "127.0.0.1, ::1"})["forwarded_allow_ips"] == [
        "127.0.0.1",
        "::1",
    ]
