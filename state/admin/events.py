"""The event log admin: the audit trail, read-only for everyone, newest first."""

from django.contrib import admin
from django.db.models import TextField
from django.db.models.functions import Cast, Substr
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from .. import selectors
from ..models import StateEvent
from .forms import pretty_json
from .pagination import LargeTablePaginator

# Characters of each value shown in the list; the detail page shows all of it.
SNIPPET = 60


class RecentValuesFilter(admin.SimpleListFilter):
    """Offer the values seen among recent events (a DISTINCT over the whole log is too slow)."""

    field = ""

    def lookups(self, request, model_admin):
        values = selectors.event_recent_values(field=self.field)
        if self.value() and self.value() not in values:
            values.append(self.value())
        return [(value, value) for value in values]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.field: self.value()})


class SourceFilter(RecentValuesFilter):
    title = parameter_name = field = "source"


class ActorFilter(RecentValuesFilter):
    title = parameter_name = field = "actor"


def _snippet(text: str | None) -> str:
    if text is None:
        return "∅"
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


@admin.register(StateEvent)
class StateEventAdmin(admin.ModelAdmin):
    list_display = ["revision", "timestamp", "op", "key_link", "version", "actor", "source",
                    "change"]  # fmt: skip
    list_filter = ["op", SourceFilter, ActorFilter]
    search_fields = ["key"]
    search_help_text = "Events of keys starting with this text (case-sensitive)."
    ordering = ["-revision"]
    # Rendering, not the database, is most of a list page's time (~2 ms a row here).
    list_per_page = 50
    paginator = LargeTablePaginator
    show_full_result_count = False
    actions = None
    fields = ["revision", "timestamp", "op", "key", "version", "actor", "source",
              "old_value_pretty", "new_value_pretty"]  # fmt: skip
    readonly_fields = fields

    class Media:
        css = {"all": ["state/admin.css"]}

    # Nobody edits the audit trail, superusers included: the event log is written only by
    # the write path, and it is what the event stream resumes from.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        # Only the start of each value is fetched for the list (values may be 1 MiB each).
        return (
            super()
            .get_queryset(request)
            .annotate(
                old_text=Substr(Cast("old_value", TextField()), 1, SNIPPET + 1),
                new_text=Substr(Cast("new_value", TextField()), 1, SNIPPET + 1),
            )
            .defer("old_value", "new_value")
        )

    def get_search_results(self, request, queryset, search_term):
        prefix = search_term.strip()
        if not prefix:
            return queryset, False
        return queryset.filter(selectors.key_prefix_q(prefix)), False

    @admin.display(description="key", ordering="key")
    def key_link(self, event: StateEvent) -> str:
        if not event.key:
            return "(whole store)"
        url = reverse("admin:state_stateevent_changelist") + "?" + urlencode({"key": event.key})
        return format_html('<a href="{}" title="every change of this key">{}</a>', url, event.key)

    @admin.display(description="old → new")
    def change(self, event: StateEvent) -> str:
        return format_html(
            '<code class="state-old">{}</code> → <code class="state-new">{}</code>',
            _snippet(event.old_text),
            _snippet(event.new_text),
        )

    @admin.display(description="old value")
    def old_value_pretty(self, event: StateEvent) -> str:
        return format_html("<pre class='state-json'>{}</pre>", pretty_json(event.old_value))

    @admin.display(description="new value")
    def new_value_pretty(self, event: StateEvent) -> str:
        return format_html("<pre class='state-json'>{}</pre>", pretty_json(event.new_value))
