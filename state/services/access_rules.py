"""Access rules: which Django groups may read or write which key prefixes. Audited.

A rule is not store state (no revision, no stream event), but it decides who sees and
changes the store, so every change is recorded with who made it, in the same transaction:
as a row of Django's admin log (`LogEntry`, which the admin shows as the rule's history and
keeps after the rule is deleted) and as a line on the `state.audit` logger for log shipping.
"""

import logging

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import IntegrityError, transaction

from .. import rules
from ..exceptions import NotFound, ValidationFailed
from ..models import AccessRule

audit_logger = logging.getLogger("state.audit")

_ACCESS = {choice.value for choice in AccessRule.Access}


def _clean(*, group: Group, prefix: str, access: str) -> tuple[Group, str, str]:
    if not isinstance(prefix, str) or not rules.KEY_PATTERN.fullmatch(prefix):
        raise ValidationFailed(
            "A rule's prefix is the start of a key: 1-256 characters of A-Z a-z 0-9 _ . : @ -, "
            "starting with a letter or digit.",
            field="prefix",
        )
    if access not in _ACCESS:
        raise ValidationFailed(f"access must be one of {sorted(_ACCESS)}.", field="access")
    if not isinstance(group, Group) or group.pk is None:
        raise ValidationFailed("group must be a saved Django group.", field="group")
    return group, prefix, access


def access_rule_validate(*, group: Group, prefix: str, access: str) -> None:
    """Raise the StateError that saving this rule would raise for its fields, if any."""
    _clean(group=group, prefix=prefix, access=access)


def _describe(rule: AccessRule) -> str:
    return f"group '{rule.group.name}' may {rule.access} '{rule.prefix}*'"


def _audit(*, actor: AbstractBaseUser, rule: AccessRule, flag: int, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=[rule],
        action_flag=flag,
        change_message=message,
        single_object=True,
    )
    audit_logger.info(
        "access rule %s %s by %s: %s", rule.pk, {ADDITION: "added", CHANGE: "changed",
        DELETION: "deleted"}[flag], actor.get_username(), message,
    )  # fmt: skip


def _save(rule: AccessRule) -> None:
    try:
        with transaction.atomic():
            rule.save()
    except IntegrityError as exc:
        raise ValidationFailed(
            f"The rule {_describe(rule)} already exists.", field="prefix"
        ) from exc


def access_rule_create(
    *, group: Group, prefix: str, access: str, actor: AbstractBaseUser
) -> AccessRule:
    """Grant `group` read or write on keys under `prefix`; record who did it."""
    group, prefix, access = _clean(group=group, prefix=prefix, access=access)
    with transaction.atomic():
        rule = AccessRule(group=group, prefix=prefix, access=access, created_by=actor)
        _save(rule)
        _audit(actor=actor, rule=rule, flag=ADDITION, message=f"Added: {_describe(rule)}.")
    return rule


def _locked_rule(rule_id: int) -> AccessRule:
    """The rule `rule_id`, locked until the transaction ends; NotFound if there is none."""
    rule = AccessRule.objects.select_for_update().select_related("group").filter(pk=rule_id).first()
    if rule is None:
        raise NotFound(f"Access rule {rule_id} does not exist.", rule_id=rule_id)
    return rule


def access_rule_update(
    *, rule_id: int, group: Group, prefix: str, access: str, actor: AbstractBaseUser
) -> AccessRule:
    """Change a rule's group, prefix or access; record who changed what from what."""
    group, prefix, access = _clean(group=group, prefix=prefix, access=access)
    with transaction.atomic():
        rule = _locked_rule(rule_id)
        before = {"group": rule.group.name, "prefix": rule.prefix, "access": rule.access}
        rule.group, rule.prefix, rule.access = group, prefix, access
        after = {"group": group.name, "prefix": prefix, "access": access}
        changes = [
            f"{name} from '{before[name]}' to '{after[name]}'"
            for name in before
            if before[name] != after[name]
        ]
        if not changes:
            return rule
        _save(rule)
        _audit(actor=actor, rule=rule, flag=CHANGE, message="Changed " + "; ".join(changes) + ".")
    return rule


def access_rule_delete(*, rule_id: int, actor: AbstractBaseUser) -> None:
    """Revoke a rule; record who revoked what."""
    with transaction.atomic():
        rule = _locked_rule(rule_id)
        # Logged before the row goes: LogEntry keeps the id and description afterwards.
        _audit(actor=actor, rule=rule, flag=DELETION, message=f"Deleted: {_describe(rule)}.")
        rule.delete()
