"""The state store's tables. Only `state.services` writes them."""

from django.conf import settings
from django.db import models


class StoreRevision(models.Model):
    """The single store-wide revision counter (one row, id=1).

    Every write transaction bumps it first; the row lock it takes serializes writers, which
    is what makes revisions gapless and strictly increasing in commit order.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    revision = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="store_revision_single_row"),
            models.CheckConstraint(
                condition=models.Q(revision__gte=0), name="store_revision_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"revision {self.revision}"


class StateEntry(models.Model):
    key = models.CharField(max_length=256, primary_key=True)
    value = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    version = models.PositiveBigIntegerField(default=1)
    revision = models.BigIntegerField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    source = models.CharField(max_length=128, blank=True, default="")
    size = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "entry"
        verbose_name_plural = "entries"
        ordering = ["key"]
        constraints = [
            models.CheckConstraint(condition=models.Q(version__gte=1), name="entry_version_gte_1"),
        ]

    def __str__(self) -> str:
        return self.key


class StateEvent(models.Model):
    """One row per change: the audit trail and the source of truth for event streams."""

    class Op(models.TextChoices):
        SET = "set"
        DELETE = "delete"
        EXPIRE = "expire"
        METADATA = "metadata"
        RESTORE = "restore"

    revision = models.BigIntegerField(primary_key=True)
    key = models.CharField(max_length=256, blank=True)
    op = models.CharField(max_length=16, choices=Op.choices)
    old_value = models.JSONField(null=True, blank=True)
    new_value = models.JSONField(null=True, blank=True)
    version = models.PositiveBigIntegerField(default=0)
    source = models.CharField(max_length=128, blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="")
    timestamp = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "event"
        ordering = ["-revision"]
        indexes = [models.Index(fields=["key", "-revision"], name="state_event_key_rev")]

    def __str__(self) -> str:
        return f"#{self.revision} {self.op} {self.key}"


class AccessRule(models.Model):
    """Grants a Django group read or write access to every key under a prefix."""

    class Access(models.TextChoices):
        READ = "read"
        WRITE = "write", "write (implies read)"

    group = models.ForeignKey("auth.Group", on_delete=models.CASCADE, related_name="state_rules")
    prefix = models.CharField(max_length=256, help_text="Key prefix, e.g. 'team:pricing:'.")
    access = models.CharField(max_length=8, choices=Access.choices, default=Access.READ)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "access rule"
        ordering = ["prefix", "group__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["group", "prefix", "access"], name="access_rule_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.group} may {self.access} {self.prefix}*"


# --- snapshots and the worker (issue 4) ---------------------------------------------------


def snapshot_storage():
    """Return the storage snapshot files live in (STORAGES["snapshots"]; S3 is configuration)."""
    from django.core.files.storage import storages

    return storages["snapshots"]


class Snapshot(models.Model):
    """A stored snapshot file of the whole store at one revision (format: state/snapshots.py)."""

    label = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(db_index=True)
    created_by = models.CharField(max_length=150, blank=True, default="")
    revision = models.BigIntegerField()
    key_count = models.PositiveBigIntegerField(default=0)
    total_size = models.PositiveBigIntegerField(default=0)
    compressed_size = models.PositiveBigIntegerField(default=0)
    checksum = models.CharField(max_length=71, help_text="sha256:<hex> of the stored file.")
    format_version = models.PositiveSmallIntegerField(default=1)
    file = models.FileField(storage=snapshot_storage, max_length=255)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"snapshot {self.pk} at revision {self.revision}"


class WorkerJob(models.Model):
    """The schedule and lease of one periodic worker job, shared by every worker process.

    A worker runs a job only after claiming it with one conditional UPDATE (due and not
    leased), so two workers never run the same occurrence twice.
    """

    name = models.CharField(max_length=64, primary_key=True)
    next_run_at = models.DateTimeField()
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_result = models.CharField(max_length=255, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    runs = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "worker job"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
