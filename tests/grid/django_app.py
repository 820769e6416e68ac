"""The grid's endpoints on Django's ASGI handler (see ``common``).

Django has no lifespan support: it refuses the lifespan scope, so prefork
(``lifespan = auto``) serves it without lifespan and /state answers null.
"""

from __future__ import annotations

import hashlib
import json

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="grid-tests-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402

from tests.grid import common  # noqa: E402


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(common.HELLO, content_type="text/plain")


async def json_args(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"name": request.GET["name"], "n": int(request.GET["n"])})


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type=request.headers.get("content-type"))


async def upload(request: HttpRequest) -> HttpResponse:
    # Django has read the body into a file already; read it back in pieces.
    sha = hashlib.sha256()
    size = 0
    while piece := request.read(65536):
        sha.update(piece)
        size += len(piece)
    return JsonResponse({"size": size, "sha256": sha.hexdigest()})


async def stream(request: HttpRequest) -> HttpResponse:
    return StreamingHttpResponse(common.stream_pieces(), content_type="text/plain")


async def headers(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("ok", content_type="text/plain")
    # Django joins repeated fields with "," in META.
    seen = request.headers.get("x-rep", "")
    response["x-seen"] = "|".join(v.strip() for v in seen.split(",")) if seen else ""
    return response  # the two x-multi fields are added by ``app`` below


async def status(request: HttpRequest, code: int) -> HttpResponse:
    return HttpResponse(status=code)


async def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the grid's raising route")


async def cookies(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookies set", content_type="text/plain")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def cookies_echo(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"a": request.COOKIES.get("a"), "b": request.COOKIES.get("b")})


async def big(request: HttpRequest) -> HttpResponse:
    return HttpResponse(common.BIG, content_type="application/octet-stream")


async def endless(request: HttpRequest) -> HttpResponse:
    return StreamingHttpResponse(common.endless(), content_type="application/octet-stream")


async def left(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"left": common.LEFT[0]})


async def state(request: HttpRequest) -> HttpResponse:
    value = (request.scope.get("state") or {}).get("value")  # type: ignore[attr-defined]
    return HttpResponse(json.dumps({"state": value}), content_type="application/json")


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
    path("cookies/echo", cookies_echo),
    path("big", big),
    path("endless", endless),
    path("left", left),
    path("state", state),
]

django_app = get_asgi_application()


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Django's ASGI app, with /headers' second x-multi field added on the way out."""
    if scope["type"] != "http" or scope["path"] != "/headers":
        await django_app(scope, receive, send)
        return

    async def send_repeats(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.start":
            extra = [(b"x-multi", b"one"), (b"x-multi", b"two")]
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    await django_app(scope, receive, send_repeats)
