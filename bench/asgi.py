"""The bench's ASGI application: the project's, plus the baselines served Django's default way.

Requests under /bench/default/ go through Django's stock `get_asgi_application()` handler:
that is what the naive implementation's author (and the plain view, "the framework's
ceiling") gets out of the box. Everything else, including /bench/plain and /bench/naive/,
goes through the application chosen by BENCH_HTTP:
  project  config.asgi.application: config.http's pooled handler (default)
  django   Django's stock handler for everything: the "before" picture
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

stock = get_asgi_application()
mode = os.environ.get("BENCH_HTTP", "project")
if mode == "project":
    from config.asgi import application as project  # noqa: E402
elif mode == "django":
    project = stock
else:
    raise RuntimeError(f"BENCH_HTTP must be project or django, not {mode!r}")


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/bench/default/"):
        return await stock(scope, receive, send)
    return await project(scope, receive, send)
