"""The webhooks section of the OpenAPI document: every event type the service
sends, with the schema of its payload.

Each delivery is a POST of ``{"type", "timestamp", "data"}`` signed per
Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``);
``data`` is the model named here. A test checks that every type of
``nudgel.api.webhooks.outbox.EVENT_TYPES`` is described, and that payloads the
service writes validate against their schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from fastapi import APIRouter, FastAPI
from nudgel.api.contacts.events import EventOut
from nudgel.api.contacts.field_definitions import FieldDefinition
from nudgel.api.contacts.models import ContactOut, DeletedContact
from nudgel.api.contacts.tags import DeletedTag, Tag
from nudgel.api.lists.catalog import SubscriptionList
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PAYLOADS", "Envelope", "document_webhooks"]

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    type: str = Field(description="The event type, e.g. `contact.created`.")
    timestamp: datetime = Field(description="When the change committed (UTC).")
    data: T


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContactTags(_Open):
    id: str = Field(description="The contact (`con_...`).")
    tags: list[str] = Field(description="The tags added or removed by this change.")


class ContactMerged(_Open):
    id: str = Field(description="The surviving contact.")
    merged_ids: list[str] = Field(description="The contacts merged into it, now gone.")
    contact: ContactOut


class RuleChange(_Open):
    contact_id: str
    at: datetime = Field(description="The evaluation instant (the test clock in test mode).")
    reason: str = Field(description="What changed: the mutation, `time`, or a deploy.")


class SegmentChange(RuleChange):
    segment: str


class ScoreChange(RuleChange):
    score: str
    old: str = Field(description="The previous value, an exact decimal as text.")
    new: str


class StageChange(RuleChange):
    old: str | None
    new: str | None


class Updated(_Open):
    previous_attributes: dict[str, Any] = Field(
        description="The members this change replaced, with their old values."
    )


class TagUpdated(Tag, Updated):
    pass


class ListUpdated(SubscriptionList, Updated):
    pass


class ListDeleted(SubscriptionList):
    deleted: Literal[True] = True


class SubscriptionChange(_Open):
    contact_id: str
    list: str
    status: Literal["pending", "subscribed", "unsubscribed", "bounced"]
    previous_status: str | None
    source: str


PAYLOADS: dict[str, tuple[type[BaseModel], str]] = {
    "contact.created": (ContactOut, "A contact was created (upsert, event, import, form)."),
    "contact.updated": (ContactOut, "A contact's profile changed; `data` is the whole profile."),
    "contact.merged": (ContactMerged, "Contacts sharing an identifier became one."),
    "contact.deleted": (DeletedContact, "A contact was erased with its timeline."),
    "contact.tagged": (ContactTags, "Tags were added to a contact."),
    "contact.untagged": (ContactTags, "Tags were removed from a contact."),
    "event.recorded": (EventOut, "An event was recorded on a contact's timeline."),
    "field.created": (FieldDefinition, "A custom field was defined (by API, write or deploy)."),
    "field.deleted": (FieldDefinition, "A custom field definition was deleted."),
    "tag.created": (Tag, "A tag was defined."),
    "tag.updated": (TagUpdated, "A tag's colour changed."),
    "tag.deleted": (DeletedTag, "A tag was deleted and taken off every contact."),
    "segment.entered": (SegmentChange, "A contact entered a segment."),
    "segment.exited": (SegmentChange, "A contact left a segment."),
    "score.changed": (ScoreChange, "A contact's score changed."),
    "stage.changed": (StageChange, "A contact's lifecycle stage changed."),
    "list.created": (SubscriptionList, "A list was created."),
    "list.updated": (ListUpdated, "A list's settings or templates changed."),
    "list.deleted": (ListDeleted, "A list was deleted with every status on it."),
    "list.pending": (SubscriptionChange, "A contact awaits confirmation (double opt-in)."),
    "list.subscribed": (SubscriptionChange, "A contact is subscribed to a list."),
    "list.unsubscribed": (SubscriptionChange, "A contact unsubscribed from a list."),
    "list.bounced": (SubscriptionChange, "A contact's address bounced for a list."),
}


def document_webhooks(app: FastAPI) -> None:
    """Describe every event type in the document's ``webhooks`` section."""
    router: APIRouter = app.webhooks
    for event_type, (model, summary) in sorted(PAYLOADS.items()):
        envelope = Envelope[model]  # type: ignore[valid-type]
        envelope.__name__ = "Webhook_" + event_type.replace(".", "_")

        def receive(body: Any) -> None:  # documentation only: never served
            """The receiver's side of a delivery."""

        # The body's model, set on the function (annotations here are strings).
        receive.__annotations__ = {"body": envelope, "return": None}
        router.post(
            event_type,
            summary=summary,
            description=f"`{event_type}`: {summary} Signed per Standard Webhooks; `data`"
            f" is a {model.__name__}. Answer 2xx within the timeout, or it is retried.",
            name=f"webhook_{event_type.replace('.', '_')}",
            tags=["Webhook events"],
        )(receive)
