"""Django admin for staff: entries, the event log, snapshots, access rules, and the live page.

Every change made here goes through `state.services` with the staff user as actor, so it is
versioned, audited and broadcast exactly like an API write. The admin classes are declarative
except where they hand a change to a service (save_model, delete_model, delete_queryset,
actions) and the few pages the admin has no form for (snapshot restore, the live page).
"""

from . import access_rules, entries, events, snapshots  # noqa: F401 - registers the admins
