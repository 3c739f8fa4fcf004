"""Size bounds of what one request may write to a contact: how many custom
field values, how large each is, and how large an event's ``props`` are.

The whole body is capped before parsing (``NUDGEL_MAX_BODY_BYTES``); these
bound the parts, so one request cannot fill a profile or a timeline row with
a megabyte of JSON. Each refusal is a 422 naming the member and the setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nudgel.api.problems import ProblemError
from nudgel.api.settings import Settings

__all__ = ["check_fields", "check_props"]


def _too_large(pointer: str, detail: str) -> ProblemError:
    return ProblemError.invalid(
        "Too large", detail, location="body", pointer=pointer, code="too_large", kind="too-large"
    )


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def check_fields(values: Mapping[str, Any], settings: Settings, within: str = "") -> None:
    """``values`` (custom fields of an upsert or an event's traits) within the bounds."""
    if len(values) > settings.max_fields_per_request:
        raise _too_large(
            f"{within}/fields",
            f"{len(values)} custom field values in one request; at most"
            f" {settings.max_fields_per_request} (NUDGEL_MAX_FIELDS_PER_REQUEST).",
        )
    for name, value in values.items():
        size = _json_size(value)
        if size > settings.max_field_value_bytes:
            raise _too_large(
                f"{within}/fields/{name}",
                f"fields.{name} is {size} bytes as JSON; at most"
                f" {settings.max_field_value_bytes} (NUDGEL_MAX_FIELD_VALUE_BYTES).",
            )


def check_props(props: Mapping[str, Any], settings: Settings) -> None:
    """An event's ``props`` within the bound."""
    size = _json_size(props)
    if size > settings.max_props_bytes:
        raise _too_large(
            "/props",
            f"props is {size} bytes as JSON; at most {settings.max_props_bytes}"
            " (NUDGEL_MAX_PROPS_BYTES).",
        )
