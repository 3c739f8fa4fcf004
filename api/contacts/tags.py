"""Tag definitions: the colour a tag is shown with; create, list, get, update, delete.

Contacts carry tags as free text (``contact_tags``); a definition gives a tag
its colour and a creation time. Rules read tags as ``tag "NAME"``.

Deleting a tag removes it from every contact of the workspace too, set-based
(a few statements whatever the number of contacts); each contact that
carried it gets ``contact.untagged`` and is re-evaluated before commit, so
segments that read the tag let those contacts go in the same transaction.
Deployed rules may go on reading ``tag "NAME"``: a tag nobody carries is
legal (the condition is false), so the rules are no reason to refuse.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from nudgel.api.contacts.definitions import Definitions
from nudgel.api.contacts.models import TagName
from nudgel.api.db.rows import fetch_one
from nudgel.api.problems import ProblemError
from nudgel.api.rules.realtime import Change
from nudgel.api.transaction import Transaction
from nudgel.api.webhooks import outbox
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["TAGS", "DeletedTag", "Tag", "TagCreate", "TagUpdate", "delete_tag", "update_tag"]

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


class DeletedTag(BaseModel):
    object: Literal["tag"] = "tag"
    name: str
    deleted: Literal[True] = True
    untagged: int = Field(description="How many contacts carried it (each got `contact.untagged`).")


async def delete_tag(tx: Transaction, name: str) -> DeletedTag:
    """Remove the definition and the tag from every contact of the workspace (404 if
    neither has it); ``contact.untagged`` for each contact, then ``tag.deleted``."""
    # The contacts first, locked in pk order as every path that locks several
    # contacts does, then the definition (a concurrent tag_contact holds its
    # contact before it writes the definition: the same order, no deadlock).
    cur = await tx.conn.execute(
        "SELECT c.pk, c.id FROM contacts c JOIN contact_tags ct ON ct.contact_pk = c.pk"
        " WHERE c.workspace_id = %s AND ct.tag = %s ORDER BY c.pk FOR UPDATE OF c",
        (tx.workspace_id, name),
    )
    carriers = [(int(pk), contact_id) for pk, contact_id in await cur.fetchall()]
    cur = await tx.conn.execute(
        "DELETE FROM tags WHERE workspace_id = %s AND name = %s", (tx.workspace_id, name)
    )
    if not carriers and cur.rowcount == 0:
        raise ProblemError.not_found(f"Tag {name!r}")
    pks = [pk for pk, _ in carriers]
    if pks:
        await tx.conn.execute(
            "DELETE FROM contact_tags WHERE tag = %s AND contact_pk = ANY(%s)", (name, pks)
        )
        await tx.conn.execute("UPDATE contacts SET updated_at = now() WHERE pk = ANY(%s)", (pks,))
        for pk in pks:
            tx.touch(pk, Change("contact.untagged", tags={name}, attributes={"updated_at"}))
        await outbox.record_many(
            tx.conn,
            tx.workspace_id,
            [("contact.untagged", {"id": cid, "tags": [name]}, pk) for pk, cid in carriers],
        )
    deleted = DeletedTag(name=name, untagged=len(carriers))
    await tx.emit("tag.deleted", deleted.model_dump(mode="json"))
    return deleted
