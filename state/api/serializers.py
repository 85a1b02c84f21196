"""Shapes of the API's requests and responses. Rules live in `state.services`, not here."""

import copy

from drf_spectacular.utils import extend_schema_serializer, inline_serializer
from rest_framework import serializers

from state.models import Snapshot, StateEvent
from state.rules import INT64_MAX


class _StrictText(serializers.CharField):
    """A JSON string: numbers and booleans are refused, not turned into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _text(**kwargs) -> serializers.CharField:
    return _StrictText(allow_blank=True, trim_whitespace=False, **kwargs)


class KeyText(_StrictText):
    """A key in a request body (its syntax is checked by the service; the schema states it)."""

    def __init__(self, **kwargs):
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)


class SourceText(_StrictText):
    def __init__(self, **kwargs):
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)


class LabelText(SourceText):
    pass


class Value(serializers.JSONField):
    """Any JSON value. Null passes here so that the service can say why it is refused."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)


class StoredValue(serializers.JSONField):
    """A value to store: any JSON but null (delete the key instead)."""


class Metadata(serializers.DictField):
    def __init__(self, **kwargs):
        super().__init__(child=_text(), **kwargs)


class StrictBoolean(serializers.BooleanField):
    """A JSON boolean: "no", "false", 0 and 1 are refused, not guessed at."""

    def to_internal_value(self, data):
        if data is True or data is False:
            return data
        self.fail("invalid", input=data)


class StrictInteger(serializers.IntegerField):
    """A JSON integer: "1", 1.0 and true are refused."""

    default_error_messages = {"invalid": "A JSON integer is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        self.run_validators(data)
        return data


class Ttl(StrictInteger):
    """Seconds to live (the bounds are the service's rule; the schema states them)."""


class Version(StrictInteger):
    """An expected version: 0 means "must not exist"."""


class Int64(StrictInteger):
    pass


class _QueryField:
    """A query-string parameter: present means its text is checked, even when empty."""

    def get_value(self, dictionary):
        # DRF treats an empty form value of an optional field as absent (`?limit=` passed).
        return dictionary.get(self.field_name, serializers.empty)


class QueryBoolean(_QueryField, serializers.BooleanField):
    """A boolean in a query string: exactly `true` or `false`."""

    default_error_messages = {"invalid": 'Must be "true" or "false".'}

    def to_internal_value(self, data):
        if data == "true":
            return True
        if data == "false":
            return False
        self.fail("invalid")


class QueryInteger(_QueryField, serializers.IntegerField):
    """A whole number in a query string: plain ASCII decimal digits, nothing else."""

    default_error_messages = {"invalid": "Must be plain decimal digits."}

    def to_internal_value(self, data):
        # isascii too: str.isdecimal() is true for other scripts' digits ("٣").
        if not isinstance(data, str) or not (data.isascii() and data.isdecimal()):
            self.fail("invalid")
        if len(data) > 19:
            self.fail("max_value", max_value=INT64_MAX)
        number = int(data)
        if number > INT64_MAX:
            self.fail("max_value", max_value=INT64_MAX)
        return number


class QueryLimit(QueryInteger):
    """A page size (bounds are the selector's rule; the schema states them)."""


class QueryVersion(QueryInteger):
    pass


class KeyCursor(_QueryField, _StrictText):
    """A listing's cursor: the last key of the previous page (checked by the selector)."""

    def __init__(self, **kwargs):
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)


class RevisionCursor(KeyCursor):
    """A history's cursor: the revision of the last event of the previous page."""


class Prefix(_QueryField, _StrictText):
    def __init__(self, **kwargs):
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)


# --- requests -----------------------------------------------------------------------------


class Input(serializers.Serializer):
    """A request's body or query string: flat fields, bound to each request's serializer by a
    shallow copy. DRF deep-copies every declared field (and what it holds) per serializer,
    which was nearly half of what a small body's parse cost, for fields that keep no state of
    their own between requests but the binding (a DictField's or ListField's child stays
    shared: it checks items without its parent)."""

    def get_fields(self):
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class ReadQuery(Input):
    include_metadata = QueryBoolean(required=False, default=False)


class SetInput(Input):
    value = StoredValue()
    metadata = Metadata(required=False)
    ttl = Ttl(required=False, allow_null=True)
    expected_version = Version(required=False, allow_null=True)
    source = SourceText(required=False)
    # The seed's body `key` must equal the path's; a schema cannot say so, so it is not in it.
    key = _text(required=False)


class DeleteQuery(Input):
    expected_version = QueryVersion(required=False)


class MetadataInput(Input):
    metadata = Metadata()
    source = SourceText(required=False)


class PageQuery(Input):
    prefix = Prefix(required=False, default="")
    limit = QueryLimit(required=False)
    cursor = KeyCursor(required=False)


class HistoryQuery(Input):
    limit = QueryLimit(required=False)
    cursor = RevisionCursor(required=False)


class KeyList(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(child=KeyText(), allow_empty=False, **kwargs)


class MgetInput(Input):
    keys = KeyList()


class CasInput(Input):
    key = KeyText()
    expected = Value(required=False)
    expected_version = Version(required=False)
    new_value = Value()
    ttl = Ttl(required=False, allow_null=True)
    source = SourceText(required=False)


class IncrInput(Input):
    key = KeyText()
    by = Int64(required=False, default=1)
    ttl = Ttl(required=False, allow_null=True)
    source = SourceText(required=False)


class BulkSetInput(serializers.Serializer):
    op = serializers.ChoiceField(choices=["set"])
    key = KeyText()
    value = StoredValue()
    metadata = Metadata(required=False)
    ttl = Ttl(required=False, allow_null=True)
    expected_version = Version(required=False, allow_null=True)
    source = SourceText(required=False)


class BulkDeleteInput(serializers.Serializer):
    op = serializers.ChoiceField(choices=["delete"])
    key = KeyText()
    expected_version = Version(required=False, allow_null=True)
    source = SourceText(required=False)


class BulkCasInput(serializers.Serializer):
    op = serializers.ChoiceField(choices=["cas"])
    key = KeyText()
    expected = Value(required=False)
    expected_version = Version(required=False)
    new_value = Value()
    ttl = Ttl(required=False, allow_null=True)
    source = SourceText(required=False)


# The operation shapes, for the schema only: the service checks every operation (see BulkParse).
BULK_OPERATIONS: dict[str, type[serializers.Serializer]] = {
    "set": BulkSetInput,
    "delete": BulkDeleteInput,
    "cas": BulkCasInput,
}


class BulkOperationInput(serializers.Serializer):
    """One operation of a bulk: the shape its `op` names (schema.OperationListSchema)."""


class OperationList(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(child=BulkOperationInput(), allow_empty=False, **kwargs)


class BulkInput(Input):
    operations = OperationList()
    atomic = StrictBoolean(required=False, default=True)
    source = SourceText(required=False)


class BulkParse(BulkInput):
    """What `bulk` parses: BulkInput's outer shape; the service checks each operation.

    A nested serializer per operation cost 0.15 s of a 1,000-operation bulk (more than the
    transaction); the service validates every field of every operation anyway.
    """

    operations = serializers.ListField(allow_empty=False)


# --- responses ----------------------------------------------------------------------------


class EntrySerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.JSONField()
    version = serializers.IntegerField()
    revision = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    source = serializers.CharField()
    metadata = serializers.DictField(child=serializers.CharField(), required=False)

    def __init__(self, *args, include_metadata: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.include_metadata = include_metadata

    def get_fields(self):
        fields = super().get_fields()
        if not self.include_metadata:
            fields.pop("metadata")
        return fields

    def to_representation(self, instance):
        # By hand, with the declared fields' output: DRF's field-by-field rendering (which
        # deep-copies every field per serializer) was a tenth of a GET's CPU in the bench.
        data = {
            "key": instance.key,
            "value": instance.value,
            "version": instance.version,
            "revision": instance.revision,
            "created_at": _DATETIME.to_representation(instance.created_at),
            "updated_at": _DATETIME.to_representation(instance.updated_at),
            "expires_at": (
                _DATETIME.to_representation(instance.expires_at) if instance.expires_at else None
            ),
            "source": instance.source,
        }
        if self.include_metadata:
            data["metadata"] = instance.metadata
        return data


_DATETIME = serializers.DateTimeField()


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = StateEvent
        fields = [
            "revision", "key", "op", "old_value", "new_value", "version", "source", "actor",
            "timestamp",
        ]  # fmt: skip


def enveloped(name: str, data) -> serializers.Serializer:
    """Describe a success envelope around `data` for the OpenAPI schema."""
    return inline_serializer(
        name, {"success": serializers.BooleanField(default=True), "data": data}
    )


ERROR_ENVELOPE = inline_serializer(
    "Error",
    {
        "success": serializers.BooleanField(default=False),
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.DictField(),
            },
        ),
    },
)


# --- snapshots (issue 4) ------------------------------------------------------------------


class SnapshotInput(Input):
    label = LabelText(required=False, default="")


class RestoreInput(Input):
    dry_run = StrictBoolean(required=False, default=False)


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = [
            "id", "label", "created_at", "created_by", "revision", "key_count", "total_size",
            "compressed_size", "checksum", "format_version",
        ]  # fmt: skip
        read_only_fields = fields


class SnapshotListSerializer(serializers.Serializer):
    snapshots = SnapshotSerializer(many=True)


# A `list` action, which spectacular would describe as a bare array; it is an envelope.
@extend_schema_serializer(many=False, component_name="Snapshots")
class SnapshotsEnvelope(serializers.Serializer):
    success = serializers.BooleanField(default=True)
    data = SnapshotListSerializer()


class RestoreResultSerializer(serializers.Serializer):
    snapshot_id = serializers.IntegerField(allow_null=True)
    snapshot_revision = serializers.IntegerField()
    key_count = serializers.IntegerField()
    total_size = serializers.IntegerField()
    checksum = serializers.CharField()
    revision = serializers.IntegerField(allow_null=True)
    dry_run = serializers.BooleanField()
