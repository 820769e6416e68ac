"""PREFORK_<KEY> environment variables: parsing, errors naming the variable, precedence."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from prefork.cli import toml_value
from prefork.config import DEFAULTS, Config, from_environ, layered
from prefork.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "text", "key", "value"),
    [
        ("PREFORK_WORKERS", "4", "workers", 4),
        ("PREFORK_GRACEFUL_TIMEOUT", "2.5", "graceful_timeout", 2.5),
        ("PREFORK_PROXY_PROTOCOL", "true", "proxy_protocol", True),
        ("PREFORK_IP", "0.0.0.0", "ip", "0.0.0.0"),  # a bare string for a string key
        ("PREFORK_IP", '"::1"', "ip", "::1"),  # or a quoted TOML string
        ("PREFORK_LOG_LEVEL", " info ", "log_level", "info"),
        ("PREFORK_REDIS_URL", "redis://127.0.0.1:6379/0", "redis_url", "redis://127.0.0.1:6379/0"),
        ("PREFORK_REDIS_URL", "", "redis_url", None),  # empty unsets an optional key
        ("PREFORK_FORWARDED_ALLOW_IPS", '["10.0.0.0/8"]', "forwarded_allow_ips", ["10.0.0.0/8"]),
        ("PREFORK_FORWARDED_ALLOW_IPS", "10.0.0.0/8,*", "forwarded_allow_ips", "10.0.0.0/8,*"),
        ("PREFORK_LOG_HEADERS", '["user-agent", "x-id"]', "log_headers", ["user-agent", "x-id"]),
        ("PREFORK_COMPRESSION", "{ level = 9 }", "compression", {"level": 9}),
        (
            "PREFORK_SSL",
            '{ default = { cert = "/c.pem", key = "/k.pem" } }',
            "ssl",
            {"default": {"cert": "/c.pem", "key": "/k.pem"}},
        ),
    ],
)
def test_values_are_read_as_toml_or_bare_strings(
    name: str, text: str, key: str, value: object
) -> None:
    assert from_environ({name: text}) == ({key: value}, [])


@pytest.mark.parametrize("key", sorted(k for k, v in DEFAULTS.items() if v is not None))
def test_every_key_can_be_set_from_the_environment(key: str) -> None:
    # The default, written as `prefork check` prints it, reads back unchanged.
    name = f"PREFORK_{key.upper()}"
    values, unknown = from_environ({name: toml_value(DEFAULTS[key])})
    assert unknown == []
    assert Config.build(values)[key] == Config.build({})[key]


def test_unknown_prefork_names_are_returned_and_others_ignored() -> None:
    values, unknown = from_environ(
        {
            "PREFORK_WORKER": "2",  # a typo of WORKERS
            "PREFORK_Workers": "2",  # keys are upper case
            "PREFORK_WORKERS": "3",
            "PATH": "/usr/bin",
            "PREFORKER": "1",
        }
    )
    assert values == {"workers": 3}
    assert unknown == ["PREFORK_WORKER", "PREFORK_Workers"]


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("PREFORK_WORKERS", "four", "not a TOML value"),
        ("PREFORK_WORKERS", "0", "must be >= 1"),
        ("PREFORK_WORKERS", '"4"', "expected an integer"),
        ("PREFORK_PORT", "70000", "0 to 65535"),
        ("PREFORK_PROXY_PROTOCOL", "yes", "not a TOML value"),
        ("PREFORK_LOG_LEVEL", "loud", "must be one of"),
        ("PREFORK_FORWARDED_ALLOW_IPS", "10.0.0.300", "not an address"),
        ("PREFORK_COMPRESSION", "{ levle = 9 }", "compression.levle: unknown key"),
        ("PREFORK_WORKERS", "", "not a TOML value"),  # only optional keys may be empty
    ],
)
def test_a_bad_value_names_the_variable(name: str, text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_environ({name: text, "PREFORK_BACKLOG": "10"})
    message = str(info.value)
    assert message.startswith(f"environment variable {name}=")
    assert why in message
    assert "\n" not in message


def test_flags_beat_environment_beat_file_beat_defaults() -> None:
    file_cfg: dict[str, Any] = {
        "workers": 2,
        "backlog": 100,
        "max_header_count": 50,
        "compression": {"level": 3, "min_size": 10},
    }
    env_cfg, _ = from_environ(
        {"PREFORK_WORKERS": "3", "PREFORK_BACKLOG": "200", "PREFORK_COMPRESSION": "{ level = 8 }"}
    )
    flags = {"workers": 4}
    cfg = Config.build(layered(file_cfg, env_cfg, flags))
    assert cfg.workers == 4  # flag
    assert cfg.backlog == 200  # environment over file
    assert cfg.max_header_count == 50  # file over default
    assert cfg.request_line_limit == DEFAULTS["request_line_limit"]
    # Tables merge key by key across the layers, as between file and flags.
    assert cfg.compression["level"] == 8
    assert cfg.compression["min_size"] == 10


def test_certificate_flags_keep_the_environments_other_ssl_keys() -> None:
    env_cfg, _ = from_environ(
        {
            "PREFORK_SSL": '{ default = { cert = "/e.pem", key = "/e.key" }, '
            'min_version = "TLSv1.3" }'
        }
    )
    flags = {"ssl": {"default": {"cert": "/f.pem", "key": "/f.key"}}}
    ssl = layered({}, env_cfg, flags)["ssl"]
    assert ssl == {"default": {"cert": "/f.pem", "key": "/f.key"}, "min_version": "TLSv1.3"}


def test_check_output_is_toml_that_rebuilds_the_config() -> None:
    # Every line `prefork check` prints for a key is `key = value` in TOML.
    cfg = Config.build(
        {
            "ssl": {
                "default": {"cert": "/c.pem", "key": "/k.pem"},
                "hosts": {"api.example.com": {"cert": "/a.pem", "key": "/a.key"}},
            },
            "root_path": '/a "quoted" \\ path',
            "log_headers": ["x-id"],
        }
    )
    lines = [
        f"{key} = {toml_value(value)}" for key, value in cfg.to_dict().items() if value is not None
    ]
    parsed = tomllib.loads("\n".join(lines))
    assert Config.build(parsed) == cfg
