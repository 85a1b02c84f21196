"""Shapes of the API's requests and responses. Rules live in `state.services`, not here."""

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from state.models import Snapshot, StateEvent


class _StrictText(serializers.CharField):
    """A JSON string: numbers and booleans are refused, not turned into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _text(**kwargs) -> serializers.CharField:
    return _StrictText(allow_blank=True, trim_whitespace=False, **kwargs)


class _Value(serializers.JSONField):
    """Any JSON value. Null passes here so that the service can say why it is refused."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)


# --- requests -----------------------------------------------------------------------------


class ReadQuery(serializers.Serializer):
    include_metadata = serializers.BooleanField(required=False, default=False)


class SetInput(serializers.Serializer):
    value = _Value()
    metadata = serializers.DictField(child=_text(), required=False)
    ttl = serializers.IntegerField(required=False, allow_null=True)
    expected_version = serializers.IntegerField(required=False, allow_null=True)
    source = _text(required=False)
    key = _text(required=False)


class DeleteQuery(serializers.Serializer):
    expected_version = serializers.IntegerField(required=False)


class MetadataInput(serializers.Serializer):
    metadata = serializers.DictField(child=_text())
    source = _text(required=False)


class PageQuery(serializers.Serializer):
    prefix = _text(required=False, default="")
    limit = serializers.IntegerField(required=False)
    cursor = _text(required=False)


class MgetInput(serializers.Serializer):
    keys = serializers.ListField(child=_text(), allow_empty=False)


class CasInput(serializers.Serializer):
    key = _text()
    expected = _Value(required=False)
    expected_version = serializers.IntegerField(required=False, allow_null=True)
    new_value = _Value()
    ttl = serializers.IntegerField(required=False, allow_null=True)
    source = _text(required=False)


class IncrInput(serializers.Serializer):
    key = _text()
    by = serializers.IntegerField(required=False, default=1)
    ttl = serializers.IntegerField(required=False, allow_null=True)
    source = _text(required=False)


class BulkOperationInput(serializers.Serializer):
    op = serializers.ChoiceField(choices=["set", "delete", "cas"])
    key = _text()
    value = _Value(required=False)
    metadata = serializers.DictField(child=_text(), required=False)
    ttl = serializers.IntegerField(required=False, allow_null=True)
    expected_version = serializers.IntegerField(required=False, allow_null=True)
    expected = _Value(required=False)
    new_value = _Value(required=False)


class BulkInput(serializers.Serializer):
    operations = BulkOperationInput(many=True, allow_empty=False)
    atomic = serializers.BooleanField(required=False, default=True)
    source = _text(required=False)


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


class SnapshotInput(serializers.Serializer):
    label = _text(required=False, default="")


class RestoreInput(serializers.Serializer):
    dry_run = serializers.BooleanField(required=False, default=False)


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = [
            "id", "label", "created_at", "created_by", "revision", "key_count", "total_size",
            "compressed_size", "checksum", "format_version",
        ]  # fmt: skip
        read_only_fields = fields


class RestoreResultSerializer(serializers.Serializer):
    snapshot_id = serializers.IntegerField(allow_null=True)
    snapshot_revision = serializers.IntegerField()
    key_count = serializers.IntegerField()
    total_size = serializers.IntegerField()
    checksum = serializers.CharField()
    revision = serializers.IntegerField(allow_null=True)
    dry_run = serializers.BooleanField()
