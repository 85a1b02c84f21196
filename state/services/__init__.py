"""The one write path: every change to the store enters through a function here.

Each function validates its input, runs in one transaction, bumps the store revision,
writes the audit event and publishes the change for broadcast after commit.
"""

from ..rules import INT64_MAX, INT64_MIN, KEY_PATTERN, MISSING, RESERVED_KEYS, validate_key
from .access_rules import (
    access_rule_create,
    access_rule_delete,
    access_rule_update,
    access_rule_validate,
)
from .encryption import Reencrypted, values_reencrypt, values_stale
from .entries import (
    BulkResult,
    CasResult,
    state_bulk,
    state_cas,
    state_delete,
    state_incr,
    state_set,
    state_set_metadata,
)
from .maintenance import (
    events_compact,
    state_expire_due,
    worker_job_claim,
    worker_job_finish,
    worker_jobs_register,
)
from .snapshots import (
    RestoreResult,
    snapshot_create,
    snapshot_delete,
    snapshot_prune,
    state_restore,
)
from .writes import _write

__all__ = [
    "access_rule_create", "access_rule_delete", "access_rule_update", "access_rule_validate",
    "INT64_MAX", "INT64_MIN", "KEY_PATTERN", "MISSING", "RESERVED_KEYS", "BulkResult",
    "CasResult", "RestoreResult", "events_compact", "snapshot_create", "snapshot_delete",
    "snapshot_prune", "state_bulk", "state_cas", "state_delete", "state_expire_due",
    "state_incr", "state_restore", "state_set", "state_set_metadata", "validate_key",
    "worker_job_claim", "worker_job_finish", "worker_jobs_register", "_write", "Reencrypted",
    "values_reencrypt", "values_stale",
]  # fmt: skip
