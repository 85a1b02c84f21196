"""Views for tests/config/test_http.py: each records what ran on which thread."""

import io
import threading

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

# (what, thread ident), appended by the views and the tests' signal receivers.
RECORD: list[tuple[str, int]] = []
BODY_FILES: list = []
RELEASE = threading.Event()  # what the held streams wait for after their first chunk
CHUNKS = 20
FILE_BYTES = 1024 * 1024


def record(what: str) -> None:
    RECORD.append((what, threading.get_ident()))


def plain(request):
    record("view")
    return HttpResponse("ok")


def streamed(request):
    record("view")

    def chunks():
        for n in range(CHUNKS):
            record("pull")
            yield f"chunk {n}\n".encode()

    return StreamingHttpResponse(chunks())


def held(request):
    def chunks():
        yield b"first"
        RELEASE.wait(timeout=10)
        yield b"rest"

    return StreamingHttpResponse(chunks())


def download(request):
    return FileResponse(io.BytesIO(b"z" * FILE_BYTES))


@csrf_exempt
def boom(request):
    record("view")
    BODY_FILES.append(request._stream)  # the handler's body file, as the request reads it
    raise RuntimeError("the view failed")


urlpatterns = [
    path("plain", plain),
    path("streamed", streamed),
    path("held", held),
    path("download", download),
    path("boom", boom),
]
