"""Admin forms: they parse what a person typed and show the store's rules' verdicts inline.

The rules themselves are `state.rules` (the functions the services call); a form only parses
text into values and files each `StateError` under the field it concerns. The service checks
everything again when it writes, under its lock, so nothing here is the last word.
"""

import json
import math
from typing import Any

from django import forms
from django.contrib.auth.models import Group
from django.utils import timezone

from .. import rules, selectors, services
from ..exceptions import StateError
from ..models import AccessRule, StateEntry

JSON_WIDGET_ATTRS = {"class": "state-json-editor", "spellcheck": "false", "autocomplete": "off"}


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, item in pairs:
        if name in result:
            raise ValueError(f"the name {json.dumps(name)} appears twice in one object")
        result[name] = item
    return result


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """Parse strict JSON (no NaN, no repeated names); raise ValidationError saying where."""
    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(
            f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise forms.ValidationError(f"Not valid JSON: {exc}.") from exc


class EntryForm(forms.ModelForm):
    """Edit one entry: its value as pretty JSON, its metadata map, its TTL.

    `loaded_version` is the version the form was opened at (0 for a new key); the save is
    refused if the entry is no longer at that version, so an edit never overwrites a change
    the editor has not seen.
    """

    key = forms.CharField(strip=False, help_text="e.g. market:BTC-USD")
    value_text = forms.CharField(
        label="Value (JSON)",
        strip=False,
        widget=forms.Textarea(attrs={**JSON_WIDGET_ATTRS, "rows": 18}),
        help_text="Any JSON except null. Checked when you save.",
    )
    metadata_text = forms.CharField(
        label="Metadata (JSON object of strings)",
        strip=False,
        required=False,
        widget=forms.Textarea(attrs={**JSON_WIDGET_ATTRS, "rows": 4}),
        help_text='e.g. {"owner": "pricing"}. Empty means none.',
    )
    ttl = forms.CharField(
        label="TTL (seconds)",
        required=False,
        help_text="Expire this many seconds after saving. Empty: never expires.",
    )
    clear_expiry = forms.BooleanField(label="Remove the expiry", required=False)
    loaded_version = forms.IntegerField(widget=forms.HiddenInput, min_value=0)

    class Meta:
        model = StateEntry
        fields: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        entry = self.instance if self.instance.pk else None
        if entry is None:
            self.initial.setdefault("loaded_version", 0)
            self.initial.setdefault("metadata_text", "{}")
            return
        self.initial.update(
            value_text=pretty_json(entry.value),
            metadata_text=pretty_json(entry.metadata),
            loaded_version=entry.version,
        )
        if entry.expires_at is None:
            del self.fields["clear_expiry"]
        else:
            self.fields["ttl"].help_text = (
                f"Currently expires at {entry.expires_at:%Y-%m-%d %H:%M:%S} UTC. Empty keeps "
                "that; a number of seconds sets a new expiry."
            )

    @staticmethod
    def _remaining(entry: StateEntry, now) -> int:
        return max(1, math.ceil((entry.expires_at - now).total_seconds()))

    def _rule(self, field: str, check, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except StateError as exc:
            self.add_error(field, exc.message)
            return None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        entry = self.instance if self.instance.pk else None
        key = entry.key if entry is not None else data.get("key")
        if entry is None and key is not None:
            key = self._rule("key", rules.validate_key, key)
        data["key"] = key
        if "value_text" in data:
            try:
                data["value"] = parse_json(data["value_text"])
            except forms.ValidationError as exc:
                self.add_error("value_text", exc)
            else:
                self._rule("value_text", rules.value_size, data["value"])
        metadata_text = data.get("metadata_text", "").strip()
        try:
            metadata = parse_json(metadata_text) if metadata_text else {}
        except forms.ValidationError as exc:
            self.add_error("metadata_text", exc)
        else:
            data["metadata"] = self._rule("metadata_text", rules.clean_metadata, metadata)
        ttl: Any = (data.get("ttl") or "").strip() or None
        if ttl is None and entry is not None and entry.expires_at is not None:
            # Writes take a TTL, not a time: keep the expiry by asking for what remains of it.
            ttl = None if data.get("clear_expiry") else self._remaining(entry, timezone.now())
        data["ttl_seconds"] = self._rule("ttl", rules.clean_ttl_text, ttl)
        if key is not None and "loaded_version" in data:
            self._check_version(key, data["loaded_version"], adding=entry is None)
        return data

    def _check_version(self, key: str, loaded: int, *, adding: bool) -> None:
        current = selectors.entry_get(key=key)
        version = current.version if current is not None else 0
        if version == loaded:
            return
        if adding:
            self.add_error("key", f"The key '{key}' already exists (version {version}).")
        else:
            self.add_error(None, stale_message(key, loaded=loaded, current=version))


def stale_message(key: str, *, loaded: int, current: int) -> str:
    """Say why a save from a form opened at version `loaded` was refused."""
    now = (
        f"it was deleted since (it was at version {loaded})"
        if current == 0
        else f"it is now at version {current} (you opened version {loaded})"
    )
    return (
        f"Not saved: '{key}' changed since you opened this form: {now}. Nothing was "
        "overwritten; reload the page to see the current value and edit that."
    )


class AccessRuleForm(forms.ModelForm):
    """Grant a group read or write under a key prefix (checked by the service's rules)."""

    class Meta:
        model = AccessRule
        fields = ["group", "prefix", "access"]

    group = forms.ModelChoiceField(queryset=Group.objects.order_by("name"))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if all(data.get(name) is not None for name in ("group", "prefix", "access")):
            try:
                services.access_rule_validate(
                    group=data["group"], prefix=data["prefix"], access=data["access"]
                )
            except StateError as exc:
                self.add_error(exc.details.get("field"), exc.message)
        return data


class SnapshotCreateForm(forms.Form):
    label = forms.CharField(required=False, help_text="Optional, e.g. before-migration.")

    def clean_label(self) -> str:
        try:
            return rules.clean_label(self.cleaned_data["label"])
        except StateError as exc:
            raise forms.ValidationError(exc.message) from exc
