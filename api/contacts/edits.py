"""Edits of one existing contact besides the upsert: tag, untag, delete.

Each locks the contact, changes it, writes its outbox event and touches the
contact for real-time evaluation, in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from nudgel.api.contacts.models import ContactOut, DeletedContact
from nudgel.api.contacts.store import add_tags
from nudgel.api.contacts.views import contact_views, lock_contact
from nudgel.api.problems import ProblemError
from nudgel.api.rules.realtime import Change
from nudgel.api.transaction import Transaction

__all__ = ["delete_contact", "tag_contact", "untag_contact"]


async def _view(tx: Transaction, pk: int) -> ContactOut:
    views = await contact_views(tx.conn, tx.workspace_id, [pk])
    return views[0]


async def delete_contact(tx: Transaction, contact_id: str) -> DeletedContact:
    """Erase the contact with its events, tags and subscriptions (404 if unknown)."""
    pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
    # It leaves its segments (segment.exited) before it goes.
    await tx.forget([pk], "contact.deleted")
    await tx.conn.execute(
        "DELETE FROM contacts WHERE pk = %s AND workspace_id = %s", (pk, tx.workspace_id)
    )
    deleted = DeletedContact(id=contact_id)
    await tx.emit("contact.deleted", deleted.model_dump(mode="json"), pk)
    return deleted


async def tag_contact(tx: Transaction, contact_id: str, tags: Sequence[str]) -> ContactOut:
    """Add ``tags`` (unknown ones are defined without a colour); ``contact.tagged``."""
    pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
    added = await add_tags(tx, pk, tags)
    if added:
        await tx.conn.execute("UPDATE contacts SET updated_at = now() WHERE pk = %s", (pk,))
        tx.touch(pk, Change("contact.tagged", attributes={"updated_at"}))
        await tx.emit("contact.tagged", {"id": contact_id, "tags": added}, pk)
    return await _view(tx, pk)


async def untag_contact(tx: Transaction, contact_id: str, tag: str) -> ContactOut:
    """Remove ``tag`` from the contact (404 if it does not carry it); ``contact.untagged``."""
    pk = await lock_contact(tx.conn, tx.workspace_id, contact_id)
    cur = await tx.conn.execute(
        "DELETE FROM contact_tags WHERE contact_pk = %s AND tag = %s", (pk, tag)
    )
    if cur.rowcount == 0:
        raise ProblemError.not_found(f"Tag {tag!r} on contact {contact_id!r}")
    await tx.conn.execute("UPDATE contacts SET updated_at = now() WHERE pk = %s", (pk,))
    tx.touch(pk, Change("contact.untagged", tags={tag}, attributes={"updated_at"}))
    await tx.emit("contact.untagged", {"id": contact_id, "tags": [tag]}, pk)
    return await _view(tx, pk)
