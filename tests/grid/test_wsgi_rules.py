"""PEP 3333's rules, served by a real ``prefork run``: the environ, root_path, a trusted
proxy, bad start_response use, exc_info, failures after the head, write(), file_wrapper."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess, StartServer, start_server
from tests.grid.wsgi_client import connect, get

__all__ = ["start_server"]  # the fixture, for the tests below

pytestmark = pytest.mark.e2e


RULES_APP = """
import json, os, sys

FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "served.bin")
with open(FILE, "wb") as f:
    f.write(bytes(range(256)) * 4096)  # 1 MiB

def app(environ, start_response):
    path = environ["PATH_INFO"]
    text = [("Content-Type", "text/plain")]
    if path.startswith("/env"):
        keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL")
        body = json.dumps({k: environ[k] for k in keys}).encode()
        start_response("200 OK", text)
        return [body]
    if path == "/who":
        who = {
            "client": environ["REMOTE_ADDR"],
            "port": "REMOTE_PORT" in environ,
            "scheme": environ["wsgi.url_scheme"],
            "host": environ.get("HTTP_HOST"),
        }
        start_response("200 OK", text)
        return [json.dumps(who).encode()]
    if path == "/bad-status":
        start_response("200", text)
        return [b"never"]
    if path == "/twice":
        start_response("200 OK", text)
        start_response("200 OK", text)
        return [b"never"]
    if path == "/hop":
        start_response("200 OK", [*text, ("Connection", "close")])
        return [b"never"]
    if path == "/non-str":
        start_response("200 OK", [*text, ("X-Count", 3)])
        return [b"never"]
    if path == "/no-start":
        return [b"never"]
    if path == "/none":
        start_response("200 OK", text)
        return None
    if path == "/exc-before":
        start_response("200 OK", text)
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Busy", text, sys.exc_info())
        return [b"replaced"]
    if path == "/exc-after":
        write = start_response("200 OK", text)
        write(b"partial")
        try:
            raise ValueError("after the head")
        except ValueError:
            start_response("500 Oops", text, sys.exc_info())
        return [b"never"]
    if path == "/raise-mid-stream":
        start_response("200 OK", text)
        def gen():
            yield b"first block"
            raise RuntimeError("mid-stream")
        return gen()
    if path == "/short":
        start_response("200 OK", [*text, ("Content-Length", "10")])
        def gen():
            yield b"12345"
        return gen()
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"hello ")
        return [b"world"]
    if path == "/reason":
        start_response("299 Custom Reason", text)
        return [b"ok"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(FILE, "rb"), 8192)
    start_response("404 Not Found", text)
    return [b"not found"]
"""


@pytest.fixture
def rules(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    config = tmp_path / "rules.toml"
    config.write_text('root_path = "/api"\n')
    return start_server(RULES_APP, "-w", "1", "-c", str(config), target="app:app")


def test_environ_script_name_and_path_info(rules: ServerProcess) -> None:
    _, body = get(rules, "/api/env/caf%C3%A9%2Fx?q=%20")
    assert json.loads(body) == {
        "SCRIPT_NAME": "/api",
        "PATH_INFO": "/env/caf\xc3\xa9/x",  # percent-decoded bytes as latin-1 (PEP 3333)
        "QUERY_STRING": "q=%20",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    # Outside root_path: SCRIPT_NAME still says where the app is mounted.
    _resp, body = get(rules, "/env")
    assert json.loads(body)["PATH_INFO"] == "/env"


def test_a_trusted_proxy_names_the_client_scheme_and_host(rules: ServerProcess) -> None:
    _, body = get(rules, "/api/who", headers={"Host": "inner:8080"})
    assert json.loads(body) == {
        "client": "127.0.0.1",
        "port": True,
        "scheme": "http",
        "host": "inner:8080",
    }
    # 127.0.0.1 is in forwarded_allow_ips by default: its word is believed.
    forwarded = {
        "Host": "inner:8080",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "example.com",
    }
    _, body = get(rules, "/api/who", headers=forwarded)
    assert json.loads(body) == {
        "client": "203.0.113.7",
        "port": False,
        "scheme": "https",
        "host": "example.com",
    }
    rules.wait_log(r'203\.0\.113\.7 "GET /api/who HTTP/1\.1" 200 ')


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/bad-status", "bad status '200'"),
        ("/twice", "start_response called a second time without exc_info"),
        ("/hop", "hop-by-hop header 'Connection'"),
        ("/non-str", "header ('X-Count', 3): name and value must be str"),
        ("/no-start", "the app returned without calling start_response"),
        ("/none", "the app returned NoneType, not an iterable"),
    ],
)
def test_bad_start_response_use_is_a_500_naming_the_app(
    rules: ServerProcess, path: str, reason: str
) -> None:
    resp, _ = get(rules, f"/api{path}")
    assert resp.status == 500
    rules.wait_log(r"app app:app broke PEP 3333 on GET /api" + re.escape(f"{path}: {reason}"))


def test_exc_info_before_the_head_replaces_the_response(rules: ServerProcess) -> None:
    resp, body = get(rules, "/api/exc-before")
    assert (resp.status, resp.reason, body) == (503, "Busy", b"replaced")


@pytest.mark.parametrize("path", ["/exc-after", "/raise-mid-stream", "/short"])
def test_failure_after_the_head_cuts_the_connection(rules: ServerProcess, path: str) -> None:
    conn = connect(rules)
    conn.request("GET", f"/api{path}")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    assert get(rules, "/api/write")[1] == b"hello world"  # the worker serves on


def test_write_callable_and_the_apps_reason_phrase(rules: ServerProcess) -> None:
    resp, body = get(rules, "/api/write")
    assert (resp.status, resp.getheader("Transfer-Encoding"), body) == (
        200,
        "chunked",
        b"hello world",
    )
    resp, _ = get(rules, "/api/reason")
    assert (resp.status, resp.reason) == (299, "Custom Reason")


def test_file_wrapper_over_tls_is_read_not_sendfile(
    start_server: StartServer, tmp_path: Path
) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    pem = str(tmp_path / "server.pem")
    server = start_server(
        RULES_APP, "-w", "1", "--certfile", pem, "--keyfile", pem, target="app:app"
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=20, context=context)
    conn.request("GET", "/file")
    resp = conn.getresponse()
    assert resp.read() == bytes(range(256)) * 4096
    conn.request("GET", "/env")  # the TLS connection is still in step
    assert json.loads(conn.getresponse().read())["PATH_INFO"] == "/env"
    conn.close()


def test_file_wrapper(rules: ServerProcess) -> None:
    expected = bytes(range(256)) * 4096
    resp, body = get(rules, "/api/file")
    assert resp.getheader("Content-Length") == str(len(expected))
    assert body == expected
    resp, body = get(rules, "/api/file", "HEAD")
    assert (resp.getheader("Content-Length"), body) == (str(len(expected)), b"")
