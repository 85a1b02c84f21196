"""The garbage collector of a server process: the start-up heap frozen, young passes rarer.

A server process holds a large heap that lives as long as it does (Django, every app's
modules, the URLconf, the schema: about 120,000 objects), and every full collection walked
all of it. A 1,000-operation bulk allocates tens of thousands of short-lived objects (parsed
JSON, rows, results), which set off young collections and, every hundred of those, a full
one. Nearly everything a request allocates is freed by reference counting; only cycles need
the collector. `bench/collector.py` (a bulk's CPU per operation in process, three rounds)
printed 102-107 us untuned, 80-96 us frozen, 80-90 us frozen with young collections 10,000
allocations apart. In a server the threshold alone moved a bulk's CPU per operation 95 -> 93
and 87 -> 84 us, within that machine's noise (bench/RESULTS.md, "Session of 2026-12-01,
evening").
"""

import gc

from django.conf import settings
from django.urls import get_resolver


def tune() -> None:
    """Freeze what start-up built; make young collections STATE_GC_THRESHOLD apart."""
    _ = get_resolver().url_patterns  # imports every view module first, so it is frozen too
    gc.collect()
    gc.freeze()
    if settings.STATE_GC_THRESHOLD:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(settings.STATE_GC_THRESHOLD, older, oldest)
