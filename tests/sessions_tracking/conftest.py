"""Fixtures for tracking tests: tracking switched on, written in the test's own transaction."""

from pathlib import Path

import pytest

from sessions_tracking import services


@pytest.fixture
def tracking(db, settings, monkeypatch) -> services.Tracker:
    """Track requests and connections into a fresh tracker with no writer thread.

    In one process the test's transaction must see the writes, so records wait in the buffer
    until the test calls `flush()` (the real background writer runs in tests/sessions_tracking's
    server tests).
    """
    settings.STATE_TRACK_REQUESTS = True
    settings.STATE_PROPAGATE_STATE = True
    tracker = services.Tracker(background=False)
    monkeypatch.setattr(services, "tracker", tracker)
    return tracker


@pytest.fixture
def snapshot_dir(settings, tmp_path) -> Path:
    location = tmp_path / "snapshots"
    settings.STORAGES = {
        **settings.STORAGES,
        "snapshots": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location
