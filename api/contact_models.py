"""The contact as the API shows it, and the body of an upsert."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from nudgel.api.pagination import ListResponse
from nudgel.api.routers.tags import TagName
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "ContactDetail",
    "ContactList",
    "ContactOut",
    "ContactTag",
    "ContactUpsert",
    "DeletedContact",
    "RecentEvent",
    "Subscription",
    "TagsAdd",
]

Identifier = Annotated[str, StringConstraints(max_length=320)]
EXAMPLE: dict[str, Any] = {
    "email": "ada@example.co.ke",
    "phone": "+254712345678",
    "name": "Ada Wanjiku",
    "tags": ["premium", "KE"],
    "fields": {"plan": "pro", "company": "Acme Ltd"},
}


class ContactUpsert(BaseModel):
    """Create or update the contact these identifiers name (merging several into one)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    email: Identifier | None = Field(default=None, description="Validated, stored lower-cased.")
    phone: Identifier | None = Field(
        default=None,
        description="Any format `phonenumbers` reads; without a country code, the default"
        " region applies. Stored as E.164.",
    )
    whatsapp_id: Identifier | None = None
    external_id: Identifier | None = Field(
        default=None,
        description="Your own id for the person. Contacts with different external ids never merge.",
    )
    name: Annotated[str, StringConstraints(max_length=500)] | None = None
    push_tokens: list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=100, description="Added to the contact's tokens."
    )
    tags: list[TagName] = Field(
        default_factory=list,
        max_length=100,
        description="Added to the contact's tags; unknown tags are created without a colour.",
    )
    fields: dict[str, Any] = Field(
        default_factory=dict,
        description="Custom field values, each of the type its definition (/v1/fields) declares."
        " `null` or empty text leaves a stored value alone.",
    )


class TagsAdd(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"tags": ["premium"]}]}
    )

    tags: list[TagName] = Field(min_length=1, max_length=100)


class ContactTag(BaseModel):
    name: str
    color: str | None


class Subscription(BaseModel):
    list: str
    status: Literal["pending", "subscribed", "unsubscribed", "bounced"]
    updated_at: datetime


class RecentEvent(BaseModel):
    object: Literal["event"] = "event"
    id: str = Field(description="`ev_` and the event's number.")
    name: str
    at: datetime
    props: dict[str, Any]
    source: str | None


class ContactOut(BaseModel):
    object: Literal["contact"] = "contact"
    id: str = Field(description="`con_...`, time-ordered.")
    email: str | None
    phone: str | None
    whatsapp_id: str | None
    external_id: str | None
    name: str | None
    push_tokens: list[str]
    fields: dict[str, Any]
    tags: list[ContactTag]
    subscriptions: list[Subscription]
    created_at: datetime | None
    updated_at: datetime | None


class ContactDetail(ContactOut):
    recent_events: list[RecentEvent] = Field(description="The latest events, newest first.")


class ContactList(ListResponse[ContactOut]):
    pass


class DeletedContact(BaseModel):
    object: Literal["contact"] = "contact"
    id: str
    deleted: Literal[True] = True
