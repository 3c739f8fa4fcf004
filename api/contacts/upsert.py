"""The whole upsert of one contact, as ``POST /v1/contacts`` does it.

:func:`identifiers_of` normalises the request's identifiers (before any
transaction: a bad one is a 422 with nothing locked). :func:`upsert_contact`
then does the rest in the caller's transaction: custom fields checked against
the workspace's definitions, identity match / create / merge
(``nudgel.api.contacts.store``), the contact's outbox events, and the
request's list subscriptions (``nudgel.api.lists.subscriptions``), retried as
one unit when a concurrent merge races it. The confirmation emails it returns
are sent by the caller after commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from nudgel.api.contacts.fields import FieldWrite, fields_for_write
from nudgel.api.contacts.identity import Identifiers, normalise_blocked
from nudgel.api.contacts.limits import check_fields
from nudgel.api.contacts.models import ContactOut, ContactUpsert, CreatedField, UpsertedContact
from nudgel.api.contacts.store import UpsertInput, upsert, with_retries
from nudgel.api.contacts.views import contact_views, emit_upsert
from nudgel.api.lists import subscriptions
from nudgel.api.settings import Settings
from nudgel.api.transaction import Transaction

__all__ = ["Upserted", "identifiers_of", "upsert_contact"]


@dataclass(frozen=True, slots=True)
class Upserted:
    status: int  # 201 created, 200 updated or merged
    contact: UpsertedContact
    outgoing: list[subscriptions.Outgoing]  # confirmation emails, to send after commit


def identifiers_of(body: ContactUpsert, settings: Settings) -> Identifiers:
    """The request's identifiers, normalised (``IdentifierError`` for a bad one)."""
    region = settings.default_phone_region
    return Identifiers.parse(
        {
            "email": body.email,
            "phone": body.phone,
            "whatsapp_id": body.whatsapp_id,
            "external_id": body.external_id,
        },
        region,
        normalise_blocked(settings.blocked_identifiers, region),
    )


def _with_created(contact: ContactOut, written: FieldWrite) -> UpsertedContact:
    created = [CreatedField.model_validate(field) for field in written.created]
    return UpsertedContact(**contact.model_dump(), created_fields=created)


def _subscription_pointer(name: str) -> str:
    return f"/subscriptions/{name}"


async def upsert_contact(
    tx: Transaction,
    confirming: subscriptions.Confirming,
    body: ContactUpsert,
    identifiers: Identifiers,
) -> Upserted:
    """Create, update or merge the contact ``body`` names, with its subscriptions.

    ``confirming`` makes any confirmation email (the caller gets it outside
    the transaction, so a new signing key is kept whatever happens to this one).
    """
    check_fields(body.fields, confirming.settings)
    written = await fields_for_write(tx, body.fields)
    req = UpsertInput(
        identifiers=identifiers,
        name=body.name,
        push_tokens=body.push_tokens,
        tags=body.tags,
        fields_json=written.fields_json,
        source=body.source,
    )

    async def attempt() -> Upserted:
        # The lists before the contact, as every path locks them.
        await subscriptions.lock_lists(tx, body.subscriptions, _subscription_pointer)
        result = await upsert(tx, req)
        contact = await emit_upsert(tx, result)
        if not body.subscriptions:
            return Upserted(result.status, _with_created(contact, written), [])
        # After the contact's own events: list.* never precede contact.created.
        outgoing = await subscriptions.apply(
            tx,
            confirming,
            result.pk,
            result.contact_id,
            body.subscriptions,
            body.source,
            pointer=_subscription_pointer,
        )
        views = await contact_views(tx.conn, tx.workspace_id, [result.pk])
        return Upserted(result.status, _with_created(views[0], written), outgoing)

    return await with_retries(tx.conn, attempt)
