"""The access rules admin: which groups may read or write which prefixes, through services."""

from django.contrib import admin

from .. import services
from ..exceptions import NotFound
from ..models import AccessRule
from .forms import AccessRuleForm


@admin.register(AccessRule)
class AccessRuleAdmin(admin.ModelAdmin):
    form = AccessRuleForm
    list_display = ["prefix", "group", "access", "created_at", "created_by"]
    list_filter = ["access", "group"]
    search_fields = ["prefix"]
    list_select_related = ["group", "created_by"]
    readonly_fields = ["created_at", "created_by"]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        fields = {"group": data["group"], "prefix": data["prefix"], "access": data["access"]}
        if change:
            rule = services.access_rule_update(rule_id=obj.pk, actor=request.user, **fields)
        else:
            rule = services.access_rule_create(actor=request.user, **fields)
        obj.pk, obj.created_at, obj.created_by = rule.pk, rule.created_at, rule.created_by

    def delete_model(self, request, obj):
        try:
            services.access_rule_delete(rule_id=obj.pk, actor=request.user)
        except NotFound:
            pass

    def delete_queryset(self, request, queryset):
        for rule_id in queryset.values_list("pk", flat=True):
            self.delete_model(request, AccessRule(pk=rule_id))

    # The service writes the admin log entry of every change, in the change's transaction
    # (so changes made outside the admin are recorded too); the admin's own would be a copy.
    def log_addition(self, request, obj, message):
        return None

    def log_change(self, request, obj, message):
        return None

    def log_deletions(self, request, queryset):
        return None
