"""A server process's garbage collector (config/heap.py), seen from a real interpreter."""

import os
import subprocess
import sys

from django.conf import settings

REPORT = "import gc, config.asgi; print(gc.get_freeze_count(), gc.get_threshold()[0])"


def gc_state(code: str, **env: str) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=settings.BASE_DIR, env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [int(number) for number in result.stdout.split()[-2:]]


def test_the_asgi_application_freezes_its_start_up_heap_and_spaces_young_collections():
    frozen, threshold = gc_state(REPORT)
    assert frozen > 50_000  # Django, the apps, the URLconf: out of every later collection
    assert threshold == 10_000


def test_a_threshold_of_zero_keeps_pythons_own():
    _, threshold = gc_state(REPORT, STATE_GC_THRESHOLD="0")
    _, pythons = gc_state("import gc; print(0, gc.get_threshold()[0])")
    assert threshold == pythons
