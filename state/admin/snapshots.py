"""The snapshots admin: take, download, restore (after a confirmation showing the changes)."""

from django.contrib import admin, messages
from django.http import FileResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .. import selectors, services, snapshots
from ..exceptions import NotFound, StateError
from ..models import Snapshot
from .forms import SnapshotCreateForm

# Keys of each kind (added, removed, changed) listed on the restore confirmation page.
PREVIEW_LIMIT = 100


def actor(request) -> str:
    return request.user.get_username()


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "label", "created_at", "created_by", "revision", "key_count",
                    "size", "compressed", "checksum_short", "links"]  # fmt: skip
    list_display_links = ["id", "label"]
    ordering = ["-created_at", "-id"]
    actions = ["restore_selected", "delete_selected"]
    fields = ["label", "created_at", "created_by", "revision", "key_count", "total_size",
              "compressed_size", "checksum", "format_version", "file", "links"]  # fmt: skip
    readonly_fields = fields
    change_list_template = "admin/state/snapshot/change_list.html"

    class Media:
        css = {"all": ["state/admin.css"]}

    def has_add_permission(self, request) -> bool:
        return False  # taken by the create view below, through the service

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a snapshot is an immutable record of its file

    @admin.display(description="total size", ordering="total_size")
    def size(self, snapshot: Snapshot) -> str:
        return filesizeformat(snapshot.total_size)

    @admin.display(description="file size", ordering="compressed_size")
    def compressed(self, snapshot: Snapshot) -> str:
        return filesizeformat(snapshot.compressed_size)

    @admin.display(description="checksum")
    def checksum_short(self, snapshot: Snapshot) -> str:
        return format_html('<code title="{}">{}…</code>', snapshot.checksum,
                           snapshot.checksum[:19])  # fmt: skip

    @admin.display(description="")
    def links(self, snapshot: Snapshot) -> str:
        return format_html(
            '<a href="{}">download</a> · <a href="{}">restore…</a>',
            reverse("admin:state_snapshot_download", args=[snapshot.pk]),
            reverse("admin:state_snapshot_restore", args=[snapshot.pk]),
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("create/", view(self.create_view), name="state_snapshot_create"),
            path("<int:snapshot_id>/download/", view(self.download_view),
                 name="state_snapshot_download"),
            path("<int:snapshot_id>/restore/", view(self.restore_view),
                 name="state_snapshot_restore"),
            *super().get_urls(),
        ]  # fmt: skip

    def _context(self, request, **extra):
        return {**self.admin_site.each_context(request), "opts": self.opts, **extra}

    def create_view(self, request):
        form = SnapshotCreateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            snapshot = services.snapshot_create(
                label=form.cleaned_data["label"], actor=actor(request)
            )
            self.message_user(
                request,
                f"Snapshot {snapshot.pk} taken at revision {snapshot.revision}: "
                f"{snapshot.key_count} keys, {filesizeformat(snapshot.total_size)}.",
                messages.SUCCESS,
            )
            return redirect("admin:state_snapshot_changelist")
        context = self._context(request, title="Take a snapshot", form=form)
        return TemplateResponse(request, "admin/state/snapshot/create.html", context)

    def download_view(self, request, snapshot_id: int):
        try:
            snapshot = selectors.snapshot_get(snapshot_id=snapshot_id)
            stream = selectors.snapshot_open_verified(snapshot=snapshot)
        except StateError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:state_snapshot_changelist")
        response = FileResponse(
            stream,
            as_attachment=True,
            filename=snapshot.file.name.rsplit("/", 1)[-1],
            content_type=snapshots.CONTENT_TYPE,
        )
        response["X-Checksum-SHA256"] = snapshot.checksum.removeprefix("sha256:")
        return response

    def restore_view(self, request, snapshot_id: int):
        """GET: what a restore would change. POST: restore, through the service."""
        if request.method == "POST":
            try:
                result = services.state_restore(
                    snapshot_id=snapshot_id, source="admin", actor=actor(request)
                )
            except StateError as exc:
                self.message_user(request, f"Not restored: {exc.message}", messages.ERROR)
                return HttpResponseRedirect(request.path)
            self.message_user(
                request,
                f"Restored snapshot {snapshot_id}: the store now holds its {result.key_count} "
                f"keys, at store revision {result.revision}.",
                messages.SUCCESS,
            )
            return redirect("admin:state_snapshot_changelist")
        try:
            preview = selectors.snapshot_restore_preview(
                snapshot_id=snapshot_id, limit=PREVIEW_LIMIT
            )
        except NotFound as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:state_snapshot_changelist")
        except StateError as exc:
            snapshot = Snapshot.objects.filter(pk=snapshot_id).first()
            context = self._context(request, title="Cannot restore", snapshot=snapshot,
                                    error=exc.message)  # fmt: skip
            return TemplateResponse(request, "admin/state/snapshot/restore.html", context)
        context = self._context(
            request,
            title=f"Restore snapshot {snapshot_id}?",
            snapshot=preview.snapshot,
            preview=preview,
            diff=preview.diff,
        )
        return TemplateResponse(request, "admin/state/snapshot/restore.html", context)

    @admin.action(description="Restore the selected snapshot…")
    def restore_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(request, "Select exactly one snapshot to restore.", messages.WARNING)
            return None
        return redirect("admin:state_snapshot_restore", ids[0])

    def delete_model(self, request, obj):
        try:
            services.snapshot_delete(snapshot_id=obj.pk, actor=actor(request))
        except NotFound:
            pass

    def delete_queryset(self, request, queryset):
        for snapshot_id in queryset.values_list("pk", flat=True):
            self.delete_model(request, Snapshot(pk=snapshot_id))
