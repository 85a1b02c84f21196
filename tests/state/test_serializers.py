"""Request serializers: fields copied shallowly per request, still bound to each one alone."""

from state.api import serializers as s


def test_each_request_serializer_binds_fields_of_its_own():
    # Shared fields would be bound to whichever request came last: a concurrent request's
    # errors would name its fields through another request's serializer.
    first, second = s.SetInput(data={"value": 1}), s.SetInput(data={"value": 2, "ttl": "x"})
    for name in ("value", "ttl", "metadata"):
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first and second.fields[name].parent is second
        assert s.SetInput._declared_fields[name].parent is None  # the declared ones stay unbound
    assert first.is_valid() and not second.is_valid()
    assert list(second.errors) == ["ttl"] and first.validated_data == {"value": 1}


def test_a_shared_child_field_still_checks_each_item():
    serializer = s.SetInput(data={"value": 1, "metadata": {"a": "b", "c": 3}})
    assert not serializer.is_valid()
    assert "c" in serializer.errors["metadata"]
    assert s.SetInput(data={"value": 1, "metadata": {"a": "b"}}).is_valid()
