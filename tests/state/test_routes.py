"""The reserved keys are exactly the API's route words, checked against the router itself."""

from django.core import checks

from state import rules
from state.api.urls import route_words
from state.checks import reserved_keys_match_routes


def test_reserved_keys_are_the_route_words():
    assert route_words() == rules.RESERVED_KEYS
    assert {"keys", "snapshots", "events"} <= route_words()  # HTTP routes and the WebSocket


def test_system_check_passes_on_the_project():
    assert reserved_keys_match_routes(None) == []
    assert not [m for m in checks.run_checks(tags=[checks.Tags.urls]) if m.id == "state.E001"]


def test_system_check_names_a_route_word_that_is_not_reserved(monkeypatch):
    monkeypatch.setattr(rules, "RESERVED_KEYS", rules.RESERVED_KEYS - {"mget"})
    [error] = reserved_keys_match_routes(None)
    assert error.id == "state.E001" and "'mget'" in error.msg
