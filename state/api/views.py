"""The REST API: each action parses, checks access, calls one service or selector, renders."""

from typing import Any

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from state import access, hotkeys, selectors, services, snapshots
from state.exceptions import NotFound, PermissionDenied, StateError, ValidationFailed
from state.rules import INT64_MAX

from . import serializers as s
from .errors import error_body, state_error_details
from .operations import InstrumentedViewSet

ERRORS = {code: s.ERROR_ENVELOPE for code in (400, 401, 403, 404, 409, 413)}
ENTRY = s.enveloped("EntryResponse", s.EntrySerializer(include_metadata=True))


def ok(data: Any, *, status_code: int = status.HTTP_200_OK, **kwargs) -> Response:
    return Response({"success": True, "data": data}, status=status_code, **kwargs)


def parse(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def actor(request: Request) -> str:
    return request.user.get_username()


def require_read(request: Request, key: str) -> str:
    services.validate_key(key)
    if not access.can_read(request.user, key):
        raise PermissionDenied(f"You may not read '{key}'.", key=key)
    return key


def require_write(request: Request, key: Any) -> None:
    services.validate_key(key)
    if not access.can_write(request.user, key):
        raise PermissionDenied(f"You may not write '{key}'.", key=key)


def require_staff(request: Request) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff may do this.")


def etag(entry) -> str:
    return f'"{entry.version}"'


def _none_match(header: str | None, tag: str) -> bool:
    """Whether an `If-None-Match` header names `tag` (weakly, as RFC 9110 says) or is `*`."""
    if header is None:
        return False
    # Proxies that compress (nginx gzip) hand clients weak W/"n" tags; they still match.
    tags = [part.strip().removeprefix("W/") for part in header.split(",")]
    return tag in tags or "*" in tags


def if_match_version(request: Request) -> int | None:
    """Read an `If-Match: "<version>"` precondition, if any."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdecimal() and len(text) <= 18):
        raise ValidationFailed('If-Match must be a version ETag such as "3".', field="If-Match")
    return int(text)


def entry_data(entry, *, include_metadata: bool = False) -> dict[str, Any]:
    return s.EntrySerializer(entry, include_metadata=include_metadata).data


# Fields of bulk operations that may be absent but not null (as in PUT and POST /cas); the
# service would read a null as absent.
BULK_NOT_NULL = {"set": ("metadata",), "cas": ("expected_version",)}

KEY_PARAM = OpenApiParameter("key", str, OpenApiParameter.PATH, description="The state key.")


class StateViewSet(InstrumentedViewSet):
    """Keys, values, versions and the operations on them."""

    lookup_field = "key"
    lookup_value_regex = "[^/]+"

    @extend_schema(parameters=[KEY_PARAM, s.ReadQuery], responses={200: ENTRY, 304: None, **ERRORS})
    def retrieve(self, request: Request, key: str) -> Response:
        # Most reads carry no query string: skip building a serializer for nothing.
        query = parse(s.ReadQuery, request.query_params) if request.query_params else {}
        require_read(request, key)
        hotkeys.record(key)
        entry = selectors.entry_get(key=key)
        if entry is None:
            raise NotFound(f"Key '{key}' does not exist.", key=key)
        tag = etag(entry)
        if _none_match(request.headers.get("If-None-Match"), tag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
        data = entry_data(entry, include_metadata=query.get("include_metadata", False))
        return ok(data, headers={"ETag": tag})

    @extend_schema(
        parameters=[KEY_PARAM], request=s.SetInput, responses={200: ENTRY, 201: ENTRY, **ERRORS}
    )
    def update(self, request: Request, key: str) -> Response:
        body = parse(s.SetInput, request.data)
        require_write(request, key)
        hotkeys.record(key)
        if "key" in body and body["key"] != key:
            raise ValidationFailed("The body's key differs from the key in the path.", field="key")
        expected = body.get("expected_version")
        if expected is None:
            expected = if_match_version(request)
        entry, created = services.state_set(
            key=key,
            value=body["value"],
            metadata=body.get("metadata"),
            ttl=body.get("ttl"),
            expected_version=expected,
            source=body.get("source", "api"),
            actor=actor(request),
        )
        return ok(
            entry_data(entry, include_metadata=True),
            status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            headers={"ETag": etag(entry)},
        )

    @extend_schema(
        parameters=[KEY_PARAM, s.DeleteQuery],
        responses={
            200: s.enveloped(
                "Deleted", inline_serializer("DeletedData", {"key": serializers.CharField(),
                                                            "deleted": serializers.BooleanField()})
            ),
            **ERRORS,
        },
    )  # fmt: skip
    def destroy(self, request: Request, key: str) -> Response:
        query = parse(s.DeleteQuery, request.query_params)
        require_write(request, key)
        hotkeys.record(key)
        expected = query.get("expected_version")
        if expected is None:
            expected = if_match_version(request)
        services.state_delete(
            key=key, expected_version=expected, source="api", actor=actor(request)
        )
        return ok({"key": key, "deleted": True})

    @extend_schema(
        methods=["GET"],
        parameters=[KEY_PARAM],
        responses={200: s.enveloped("Metadata", serializers.DictField()), **ERRORS},
    )
    @extend_schema(
        methods=["PUT"],
        parameters=[KEY_PARAM],
        request=s.MetadataInput,
        responses={200: s.enveloped("MetadataSet", serializers.DictField()), **ERRORS},
    )
    @action(detail=True, methods=["get", "put"])
    def metadata(self, request: Request, key: str) -> Response:
        if request.method == "GET":
            require_read(request, key)
            hotkeys.record(key)
            entry = selectors.entry_get(key=key)
            if entry is None:
                raise NotFound(f"Key '{key}' does not exist.", key=key)
            return ok(entry.metadata)
        body = parse(s.MetadataInput, request.data)
        require_write(request, key)
        hotkeys.record(key)
        entry = services.state_set_metadata(
            key=key, metadata=body["metadata"], source=body.get("source", "api"),
            actor=actor(request),
        )  # fmt: skip
        return ok(entry.metadata)

    @extend_schema(
        parameters=[KEY_PARAM, s.HistoryQuery],
        responses={
            200: s.enveloped("History", inline_serializer("HistoryPage", {
                "events": s.EventSerializer(many=True), "total": serializers.IntegerField(),
                "next_cursor": serializers.CharField(allow_null=True)})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=True, methods=["get"])
    def history(self, request: Request, key: str) -> Response:
        require_staff(request)
        services.validate_key(key)
        query = parse(s.HistoryQuery, request.query_params)
        page = selectors.key_history(key=key, limit=query.get("limit"), cursor=query.get("cursor"))
        return ok(
            {
                "events": s.EventSerializer(page.items, many=True).data,
                "total": page.total,
                "next_cursor": page.next_cursor,
            }
        )

    @extend_schema(
        parameters=[s.PageQuery],
        responses={
            200: s.enveloped("Keys", inline_serializer("KeysPage", {
                "keys": serializers.ListField(child=serializers.CharField()),
                "total": serializers.IntegerField(),
                "next_cursor": serializers.CharField(allow_null=True)})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["get"])
    def keys(self, request: Request) -> Response:
        query = parse(s.PageQuery, request.query_params)
        page = selectors.keys_list(
            prefix=query["prefix"],
            readable=access.readable_filter(request.user),
            limit=query.get("limit"),
            cursor=query.get("cursor"),
        )
        return ok({"keys": page.items, "total": page.total, "next_cursor": page.next_cursor})

    @extend_schema(
        parameters=[s.PageQuery, s.ReadQuery],
        responses={
            200: s.enveloped("Entries", inline_serializer("EntriesPage", {
                "entries": s.EntrySerializer(many=True), "total": serializers.IntegerField(),
                "next_cursor": serializers.CharField(allow_null=True),
                "revision": serializers.IntegerField()})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["get"])
    def entries(self, request: Request) -> Response:
        query = parse(s.PageQuery, request.query_params)
        include_metadata = parse(s.ReadQuery, request.query_params)["include_metadata"]
        page, revision = selectors.entries_list(
            prefix=query["prefix"],
            readable=access.readable_filter(request.user),
            limit=query.get("limit"),
            cursor=query.get("cursor"),
        )
        entries = s.EntrySerializer(page.items, many=True, include_metadata=include_metadata).data
        return ok(
            {
                "entries": entries,
                "total": page.total,
                "next_cursor": page.next_cursor,
                "revision": revision,
            }
        )

    @extend_schema(
        request=s.MgetInput,
        responses={
            200: s.enveloped("Mget", inline_serializer("MgetData", {
                "entries": serializers.DictField(child=s.EntrySerializer(allow_null=True))})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["post"])
    def mget(self, request: Request) -> Response:
        keys = parse(s.MgetInput, request.data)["keys"]
        if len(keys) > settings.STATE_MAX_MGET_KEYS:
            raise ValidationFailed(
                f"At most {settings.STATE_MAX_MGET_KEYS} keys per request.", field="keys"
            )
        for key in keys:
            require_read(request, key)
        hotkeys.record(*keys)
        found = selectors.entries_get_many(keys=keys)
        return ok({"entries": {key: entry_data(e) if e else None for key, e in found.items()}})

    @extend_schema(
        request=s.CasInput,
        responses={
            200: s.enveloped("Cas", inline_serializer("CasData", {
                "swapped": serializers.BooleanField(), "version": serializers.IntegerField()})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["post"])
    def cas(self, request: Request) -> Response:
        body = parse(s.CasInput, request.data)
        require_write(request, body["key"])
        hotkeys.record(body["key"])
        result = services.state_cas(
            key=body["key"],
            expected=body.get("expected", services.MISSING),
            expected_version=body.get("expected_version"),
            new_value=body["new_value"],
            ttl=body.get("ttl"),
            source=body.get("source", "api"),
            actor=actor(request),
        )
        return ok({"swapped": result.swapped, "version": result.version})

    @extend_schema(
        request=s.IncrInput,
        responses={
            200: s.enveloped("Incr", inline_serializer("IncrData", {
                "value": serializers.IntegerField(), "version": serializers.IntegerField()})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["post"])
    def incr(self, request: Request) -> Response:
        body = parse(s.IncrInput, request.data)
        require_write(request, body["key"])
        hotkeys.record(body["key"])
        entry = services.state_incr(
            key=body["key"],
            by=body["by"],
            ttl=body.get("ttl"),
            source=body.get("source", "api"),
            actor=actor(request),
        )
        return ok({"value": entry.value, "version": entry.version})

    @extend_schema(
        request=s.BulkInput,
        responses={
            200: s.enveloped("Bulk", inline_serializer("BulkData", {
                "atomic": serializers.BooleanField(),
                "results": serializers.ListField(child=serializers.DictField())})),
            **ERRORS,
        },
    )  # fmt: skip
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        body = parse(s.BulkParse, request.data)
        operations = body["operations"]
        for index, operation in enumerate(operations):
            try:
                if not isinstance(operation, dict) or not isinstance(operation.get("key"), str):
                    raise ValidationFailed(
                        "Each operation is an object with a string 'key'.", field="operations"
                    )
                kind = operation.get("op")
                for name in BULK_NOT_NULL.get(kind, ()) if isinstance(kind, str) else ():
                    if name in operation and operation[name] is None:
                        raise ValidationFailed(f"{name} cannot be null.", field=name)
                require_write(request, operation["key"])
            except StateError as exc:
                exc.details["index"] = index
                raise
        hotkeys.record(*(operation["key"] for operation in operations))
        results = services.state_bulk(
            operations=operations,
            atomic=body["atomic"],
            source=body.get("source", "api"),
            actor=actor(request),
        )
        return ok({"atomic": body["atomic"], "results": [_bulk_result(r) for r in results]})

    @extend_schema(responses={200: s.enveloped("Stats", serializers.DictField()), **ERRORS})
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        user = request.user
        return ok(
            selectors.store_stats(
                readable=access.readable_filter(user),
                can_read=lambda key: access.can_read(user, key),
            )
        )


def _bulk_result(result: services.BulkResult) -> dict[str, Any]:
    data: dict[str, Any] = {"index": result.index, "op": result.op, "key": result.key}
    if result.error is None:
        data.update(ok=True, version=result.version)
    else:
        error = result.error
        data.update(ok=False, **error_body(error.code, error.message, state_error_details(error)))
        data.pop("success")
    return data


# --- snapshots (issue 4) ------------------------------------------------------------------

SNAPSHOT = s.enveloped("SnapshotResponse", s.SnapshotSerializer())


def snapshot_id(pk: str) -> int:
    """The snapshot id in a path (the route allows only digits); beyond any id is not found."""
    if len(pk) > 19 or int(pk) > INT64_MAX:
        raise NotFound(f"Snapshot {pk} does not exist.")
    return int(pk)


SNAPSHOT_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The snapshot id.")


class SnapshotViewSet(InstrumentedViewSet):
    """Snapshots of the whole store: take, list, show, download, restore, delete. Staff only."""

    permission_classes = [permissions.IsAdminUser]
    lookup_value_regex = "[0-9]+"

    @extend_schema(request=s.SnapshotInput, responses={201: SNAPSHOT, **ERRORS})
    def create(self, request: Request) -> Response:
        body = parse(s.SnapshotInput, request.data)
        snapshot = services.snapshot_create(label=body["label"], actor=actor(request))
        return ok(s.SnapshotSerializer(snapshot).data, status_code=status.HTTP_201_CREATED)

    @extend_schema(
        responses={200: s.SnapshotsEnvelope, **ERRORS},
    )  # fmt: skip
    def list(self, request: Request) -> Response:
        snapshots = s.SnapshotSerializer(selectors.snapshots_list(), many=True).data
        return ok({"snapshots": snapshots})

    @extend_schema(parameters=[SNAPSHOT_ID], responses={200: SNAPSHOT, **ERRORS})
    def retrieve(self, request: Request, pk: str) -> Response:
        return ok(s.SnapshotSerializer(selectors.snapshot_get(snapshot_id=snapshot_id(pk))).data)

    @extend_schema(
        parameters=[SNAPSHOT_ID],
        responses={200: s.enveloped("SnapshotDeleted", inline_serializer("SnapshotDeletedData", {
            "id": serializers.IntegerField(), "deleted": serializers.BooleanField()})), **ERRORS},
    )  # fmt: skip
    def destroy(self, request: Request, pk: str) -> Response:
        services.snapshot_delete(snapshot_id=snapshot_id(pk), actor=actor(request))
        return ok({"id": snapshot_id(pk), "deleted": True})

    @extend_schema(
        parameters=[SNAPSHOT_ID],
        responses={(200, snapshots.CONTENT_TYPE): OpenApiTypes.BINARY, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str) -> FileResponse:
        snapshot = selectors.snapshot_get(snapshot_id=snapshot_id(pk))
        response = FileResponse(
            selectors.snapshot_open_verified(snapshot=snapshot),
            as_attachment=True,
            filename=snapshot.file.name.rsplit("/", 1)[-1],
            content_type=snapshots.CONTENT_TYPE,
        )
        response["X-Checksum-SHA256"] = snapshot.checksum.removeprefix("sha256:")
        return response

    @extend_schema(
        parameters=[SNAPSHOT_ID],
        request=s.RestoreInput,
        responses={200: s.enveloped("Restored", s.RestoreResultSerializer()), **ERRORS},
    )
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str) -> Response:
        body = parse(s.RestoreInput, request.data)
        result = services.state_restore(
            snapshot_id=snapshot_id(pk), dry_run=body["dry_run"], source="api", actor=actor(request)
        )
        return ok(s.RestoreResultSerializer(result).data)
