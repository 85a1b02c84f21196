"""Token authentication accepting both `Authorization: Bearer <token>` and `Token <token>`."""

import copy
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

from state import access
from state.models import AccessRule

KEYWORDS = (b"bearer", b"token")

# token key -> (monotonic expiry, user, token). The token lookup (an ORM join) was the
# largest single cost of a GET in the bench profile, so each process remembers a token's
# user, and its groups' access rules, for STATE_TOKEN_CACHE_SECS. Revoking a token,
# deactivating a user, changing is_staff, a rule or a membership therefore takes effect
# within that many seconds on other processes (and by bulk .update(), which sends no
# signal); in this process a save or delete clears it.
_token_cache: dict[str, tuple[float, object, Token]] = {}
_TOKEN_CACHE_MAX = 10_000


def _forget_tokens(**kwargs) -> None:
    _token_cache.clear()


post_delete.connect(_forget_tokens, sender=Token, dispatch_uid="state.token_cache.token")
post_save.connect(_forget_tokens, sender=get_user_model(), dispatch_uid="state.token_cache.user")
post_delete.connect(_forget_tokens, sender=get_user_model(), dispatch_uid="state.token_cache.del")
# The cached user carries its groups' access rules too (access.py reads them once per user
# object), so a change of rules or of group membership clears the cache as well.
post_save.connect(_forget_tokens, sender=AccessRule, dispatch_uid="state.token_cache.rule")
post_delete.connect(_forget_tokens, sender=AccessRule, dispatch_uid="state.token_cache.unrule")
m2m_changed.connect(
    _forget_tokens, sender=get_user_model().groups.through, dispatch_uid="state.token_cache.groups"
)


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in KEYWORDS:
            return None
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: give one token.")
        try:
            token = auth[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token header.") from exc
        return self.authenticate_credentials(token)

    def authenticate_credentials(self, key):
        now = time.monotonic()
        cached = _token_cache.get(key)
        if cached is None or cached[0] <= now:
            user, token = super().authenticate_credentials(key)
            access.readable_prefixes(user)  # load its group rules once, with the user
            if len(_token_cache) >= _TOKEN_CACHE_MAX:
                _token_cache.clear()
            cached = (now + settings.STATE_TOKEN_CACHE_SECS, user, token)
            _token_cache[key] = cached
        # A copy per request, so nothing a request sets on its user outlives it; the group
        # rules loaded above come along (a shallow copy keeps the attribute).
        return copy.copy(cached[1]), cached[2]
