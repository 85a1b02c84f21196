"""Django admin for staff: access rules are edited here; entries and events are shown read-only.

Entries are changed only through `state.services` (REST, commands, worker), so the admin offers
no add/change/delete for them here.
"""

from django.contrib import admin

from .models import AccessRule, StateEntry, StateEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StateEntry)
class StateEntryAdmin(ReadOnlyAdmin):
    list_display = ["key", "version", "revision", "size", "updated_at", "expires_at", "source"]
    search_fields = ["key"]
    ordering = ["key"]


@admin.register(StateEvent)
class StateEventAdmin(ReadOnlyAdmin):
    list_display = ["revision", "op", "key", "version", "actor", "source", "timestamp"]
    list_filter = ["op"]
    search_fields = ["key", "actor"]


@admin.register(AccessRule)
class AccessRuleAdmin(admin.ModelAdmin):
    list_display = ["prefix", "group", "access", "created_at", "created_by"]
    list_filter = ["access", "group"]
    search_fields = ["prefix"]
    readonly_fields = ["created_at", "created_by"]

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
