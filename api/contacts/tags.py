"""Tag definitions: the colour a tag is shown with; create, list, get, update.

Contacts carry tags as free text (``contact_tags``); a definition gives a tag
its colour and a creation time. Rules read tags as ``tag "NAME"``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from nudgel.api.contacts.definitions import Definitions
from nudgel.api.contacts.models import TagName
from nudgel.api.db.rows import fetch_one
from nudgel.api.transaction import Transaction
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["TAGS", "Tag", "TagCreate", "TagUpdate", "update_tag"]

Color = Annotated[
    str,
    StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$"),
    # Stored lower-case so equal colours compare equal.
    AfterValidator(str.lower),
]
_COLOR_DESCRIPTION = "`#rrggbb`, stored in lower case; null for none."


class TagCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "premium", "color": "#ff8800"}]}
    )

    name: TagName = Field(description="The tag as contacts carry it.")
    color: Color | None = Field(default=None, description=_COLOR_DESCRIPTION)


class TagUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"color": "#00aa55"}]}
    )

    color: Color | None = Field(default=None, description=_COLOR_DESCRIPTION + " Omit to keep.")


class Tag(BaseModel):
    object: Literal["tag"] = "tag"
    name: str
    color: str | None
    created_at: datetime
    updated_at: datetime


# Create (``tag.created``), list, get.
TAGS = Definitions("tag", "tags", Tag, ("name", "color", "created_at", "updated_at"))


async def update_tag(tx: Transaction, name: str, body: TagUpdate) -> Tag:
    """Set the colour (404 if the tag is not defined); ``tag.updated`` with
    ``previous_attributes`` when it changed."""
    # FOR UPDATE: the previous colour in the event is the one this update replaced.
    before = await TAGS.get(tx.conn, tx.workspace_id, name, for_update=True)
    if "color" not in body.model_fields_set or body.color == before.color:
        return before
    after = await fetch_one(
        tx.conn,
        Tag,
        "UPDATE tags SET color = %s, updated_at = now() WHERE workspace_id = %s AND name = %s"
        " RETURNING name, color, created_at, updated_at",
        (body.color, tx.workspace_id, name),
    )
    assert after is not None  # the row is locked since the SELECT above
    await tx.emit(
        "tag.updated",
        {**after.model_dump(mode="json"), "previous_attributes": {"color": before.color}},
    )
    return after
