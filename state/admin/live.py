"""The live page: store stats and the event stream in the browser, for staff."""

import string

from django.conf import settings
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import selectors

# Every key starts with one of these (state.rules.KEY_PATTERN), so subscribing to all of
# them is "every key" in the stream's own protocol, with no special case on the server.
EVERY_KEY = list(string.ascii_letters + string.digits)


def live_view(request):
    """Render the live page; the browser then talks to the stream and the stats endpoint."""
    config = {
        "stream_path": "/api/v1/state/events",
        "stats_url": reverse("state-stats"),
        "every_key": EVERY_KEY,
        "progress_interval": settings.STATE_PROGRESS_INTERVAL_SECS,
        "max_rows": 500,
        "entry_url": reverse("admin:state_stateentry_change", args=["KEY"]),
        "history_url": reverse("admin:state_stateevent_changelist") + "?key=",
    }
    context = {
        **admin.site.each_context(request),
        "title": "Live state",
        "stats": selectors.store_stats(),
        "config": config,
    }
    return TemplateResponse(request, "admin/state/live.html", context)
