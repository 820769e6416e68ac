"""The WSGI grid's endpoints as a one-module Django project (``tests.grid.django_wsgi_app:app``)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="grid-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    # What startproject lists first; it also sets Content-Length on whole bodies.
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,  # the 5 MiB upload
    USE_TZ=True,
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402 - after settings
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402

from tests.grid.wsgi_files import grid_file  # noqa: E402

BIG = 10 * 1024 * 1024
BLOCK = 64 * 1024
_lock = threading.Lock()
_closed = 0  # endless streams closed (the client left)
FILE = grid_file("django")


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"Hello, World!", content_type="text/plain")


def json_args(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"name": request.GET["name"], "n": int(request.GET["n"])})


def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type=request.content_type)


def upload(request: HttpRequest) -> HttpResponse:
    data = request.body
    return JsonResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def stream(request: HttpRequest) -> HttpResponse:
    n = int(request.GET.get("n", "5"))
    return StreamingHttpResponse(
        (f"chunk {i}\n".encode() for i in range(n)), content_type="text/plain"
    )


def headers(request: HttpRequest) -> HttpResponse:
    resp = JsonResponse({"x_test": request.headers.get("X-Test")})
    # Django keeps one value per name: the repeat is joined, as RFC 9110 allows.
    resp["X-Multi"] = "a, b"
    return resp


def status(request: HttpRequest, code: int) -> HttpResponse:
    if code in (204, 304):
        resp = HttpResponse(status=code)
        del resp["Content-Type"]
        return resp
    return HttpResponse(f"status {code}", status=code, content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the grid's raising route")


def cookies(request: HttpRequest) -> HttpResponse:
    resp = JsonResponse(dict(request.COOKIES))
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2")
    return resp


def big(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"x" * BIG, content_type="text/plain")


def endless(request: HttpRequest) -> HttpResponse:
    def blocks() -> Iterator[bytes]:
        global _closed
        block = b"e" * BLOCK
        try:
            for _ in range(100_000):
                yield block
        finally:
            with _lock:
                _closed += 1

    return StreamingHttpResponse(blocks(), content_type="application/octet-stream")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(open(FILE, "rb"), content_type="application/octet-stream")


def closed(request: HttpRequest) -> HttpResponse:
    with _lock:
        return JsonResponse({"closed": _closed})


urlpatterns = [
    path("hello", hello),
    path("json", json_args),
    path("echo", echo),
    path("upload", upload),
    path("stream", stream),
    path("headers", headers),
    path("status/<int:code>", status),
    path("raise", boom),
    path("cookies", cookies),
    path("big", big),
    path("endless", endless),
    path("file", file),
    path("closed", closed),
]

app = get_wsgi_application()
