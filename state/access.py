"""Who may read and write which keys: one definition, used by the API and the event stream."""

from django.conf import settings
from django.db.models import Q

from .models import AccessRule
from .selectors import key_prefix_q

_RULES_CACHE_ATTR = "_state_access_rules"


def _group_rules(user) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (readable, writable) prefixes granted to the user's groups, once per user object."""
    cached = getattr(user, _RULES_CACHE_ATTR, None)
    if cached is None:
        read: list[str] = []
        write: list[str] = []
        for prefix, access in AccessRule.objects.filter(group__user=user).values_list(
            "prefix", "access"
        ):
            (write if access == AccessRule.Access.WRITE else read).append(prefix)
        cached = (tuple(read + write), tuple(write))
        setattr(user, _RULES_CACHE_ATTR, cached)
    return cached


def _own_prefixes(user) -> tuple[str, ...]:
    return tuple(f"{ns}:{user.get_username()}" for ns in settings.STATE_USER_NAMESPACES)


def _is_own(user, key: str) -> bool:
    return any(key == own or key.startswith(own + ":") for own in _own_prefixes(user))


def can_read(user, key: str) -> bool:
    """Staff read everything; others read public prefixes, their own keys and granted prefixes."""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    return (
        key.startswith(tuple(settings.STATE_PUBLIC_PREFIXES))
        or _is_own(user, key)
        or key.startswith(_group_rules(user)[0])
    )


def can_write(user, key: str) -> bool:
    """Staff write everything; others only under prefixes their groups hold a write rule on."""
    if not user.is_authenticated:
        return False
    return user.is_staff or key.startswith(_group_rules(user)[1])


def readable_prefixes(user) -> list[str]:
    """Return the prefixes a non-staff user may read (own keys as `ns:name` and `ns:name:`)."""
    own = [p for prefix in _own_prefixes(user) for p in (prefix, prefix + ":")]
    return [*settings.STATE_PUBLIC_PREFIXES, *own, *_group_rules(user)[0]]


def can_read_prefix(user, prefix: str) -> bool:
    """Whether every key under `prefix` is readable, so a subscription to it leaks nothing."""
    if user.is_staff:
        return True
    if not user.is_authenticated:
        return False
    allowed = [*settings.STATE_PUBLIC_PREFIXES, *_group_rules(user)[0]]
    allowed += [own + ":" for own in _own_prefixes(user)]
    return prefix.startswith(tuple(allowed)) or prefix in _own_prefixes(user)


def readable_filter(user) -> Q | None:
    """A filter on `key` selecting what the user may read; None means everything."""
    if user.is_staff:
        return None
    query = Q(pk__in=[])
    for prefix in settings.STATE_PUBLIC_PREFIXES + list(_group_rules(user)[0]):
        query |= key_prefix_q(prefix)
    for own in _own_prefixes(user):
        query |= Q(key=own) | key_prefix_q(own + ":")
    return query
