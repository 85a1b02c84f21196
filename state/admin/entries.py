"""The entries admin: list, search and filter keys; edit a value as JSON; add and delete."""

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from .. import selectors, services
from ..exceptions import NotFound, StateError
from ..models import StateEntry
from .forms import EntryForm
from .pagination import LargeTablePaginator

SOURCE = "admin"


def actor(request) -> str:
    return request.user.get_username()


class NamespaceFilter(admin.SimpleListFilter):
    title = "namespace"
    parameter_name = "namespace"
    NONE = "-"

    def lookups(self, request, model_admin):
        names = [(name, name) for name in sorted(selectors.entry_namespaces())]
        return [*names, (self.NONE, "(no namespace)")]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value == self.NONE:
            return queryset.exclude(key__contains=":")
        return queryset.filter(selectors.key_prefix_q(value + ":"))


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiring"

    def lookups(self, request, model_admin):
        return [("yes", "expiring (has a TTL)"), ("no", "never expires")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(expires_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(expires_at__isnull=True)
        return queryset


class EntryChangeList(ChangeList):
    def get_queryset(self, request, exclude_parameters=None):
        # The list never shows values, which may be up to STATE_MAX_VALUE_BYTES each.
        return super().get_queryset(request, exclude_parameters).defer("value", "metadata")


@admin.register(StateEntry)
class StateEntryAdmin(admin.ModelAdmin):
    form = EntryForm
    list_display = ["key", "namespace", "version", "size_display", "updated_at", "expires_at",
                    "source"]  # fmt: skip
    list_filter = [NamespaceFilter, ExpiryFilter]
    search_fields = ["key"]
    search_help_text = "Keys starting with this text (case-sensitive)."
    ordering = ["key"]
    # Rendering, not the database, is most of a list page's time (~2 ms a row here).
    list_per_page = 50
    paginator = LargeTablePaginator
    show_full_result_count = False

    class Media:
        css = {"all": ["state/admin.css"]}
        js = ["state/json-editor.js"]

    @admin.display(description="namespace")
    def namespace(self, entry: StateEntry) -> str:
        name, colon, _ = entry.key.partition(":")
        return name if colon else "-"

    @admin.display(description="size", ordering="size")
    def size_display(self, entry: StateEntry) -> str:
        return filesizeformat(entry.size)

    @admin.display(description="history")
    def history_link(self, entry: StateEntry) -> str:
        url = reverse("admin:state_stateevent_changelist") + "?" + urlencode({"key": entry.key})
        return format_html('<a href="{}">every change of {} in the event log</a>', url, entry.key)

    def get_object(self, request, object_id, from_field=None):
        # The form edits the value its readers see: decrypted, if its key is encrypted.
        entry = super().get_object(request, object_id, from_field)
        return selectors.decrypted(entry) if entry is not None else None

    def get_changelist(self, request, **kwargs):
        return EntryChangeList

    def get_search_results(self, request, queryset, search_term):
        prefix = search_term.strip()
        if not prefix:
            return queryset, False
        return queryset.filter(selectors.key_prefix_q(prefix)), False

    def get_fieldsets(self, request, obj=None):
        editable = ["key", "value_text", "metadata_text", "ttl", "loaded_version"]
        if obj is None:
            return [(None, {"fields": editable})]
        if obj.expires_at is not None:
            editable.insert(4, "clear_expiry")
        record = ["version", "revision", "size", "created_at", "updated_at", "expires_at",
                  "source", "history_link"]  # fmt: skip
        return [(None, {"fields": editable}), ("Record", {"fields": record})]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key", "version", "revision", "size", "created_at", "updated_at", "expires_at",
                "source", "history_link"]  # fmt: skip

    # --- changes: each one is a service call ------------------------------------------------

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        entry, _ = services.state_set(
            key=data["key"],
            value=data["value"],
            metadata=data["metadata"],
            ttl=data["ttl_seconds"],
            expected_version=data["loaded_version"],
            source=SOURCE,
            actor=actor(request),
        )
        obj.key, obj.version = entry.key, entry.version

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except StateError as exc:
            # save_model's service call refused what the form had accepted: the entry changed
            # between the form's check and the write. Nothing was written (the admin's
            # transaction rolled back); show the entry as it is now.
            self.message_user(request, f"Not saved: {exc.message}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_model(self, request, obj):
        try:
            services.state_delete(key=obj.key, source=SOURCE, actor=actor(request))
        except NotFound:
            pass  # gone already (deleted or expired meanwhile): what was asked for

    def delete_queryset(self, request, queryset):
        keys = list(queryset.order_by("key").values_list("key", flat=True))
        deleted, gone = delete_keys(keys, actor=actor(request))
        if gone:
            self.message_user(
                request, f"{gone} of the selected entries were gone already.", messages.WARNING
            )


def delete_keys(keys: list[str], *, actor: str) -> tuple[int, int]:
    """Delete `keys` through the write path in atomic batches; return (deleted, already gone)."""
    deleted = gone = 0
    size = settings.STATE_MAX_BULK_OPERATIONS
    for start in range(0, len(keys), size):
        batch = keys[start : start + size]
        while batch:
            try:
                services.state_bulk(
                    operations=[{"op": "delete", "key": key} for key in batch],
                    atomic=True,
                    source=SOURCE,
                    actor=actor,
                )
            except NotFound as exc:
                # Deleted meanwhile: nothing of this batch was applied; retry without it.
                index = exc.details.get("index", 0)
                batch = batch[:index] + batch[index + 1 :]
                gone += 1
                continue
            deleted += len(batch)
            break
    return deleted, gone
