"""System checks: the API's route words and the reserved keys are one list."""

from django.core import checks


@checks.register(checks.Tags.urls)
def reserved_keys_match_routes(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Every route word must be reserved (else a key could never be addressed), and only those."""
    from state.api.urls import route_words
    from state.rules import RESERVED_KEYS

    words = route_words()
    if words == RESERVED_KEYS:
        return []
    return [
        checks.Error(
            "state.rules.RESERVED_KEYS differs from the API's route words: "
            f"missing {sorted(words - RESERVED_KEYS)}, extra {sorted(RESERVED_KEYS - words)}.",
            hint="Add the new route word to RESERVED_KEYS (or remove the stale one).",
            id="state.E001",
        )
    ]
