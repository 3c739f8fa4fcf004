"""The contact as the API shows it, and the body of an upsert."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = [
    "DEFAULT_SOURCE",
    "PRINTABLE_TEXT",
    "ContactDetail",
    "ContactOut",
    "ContactTag",
    "ContactTraits",
    "ContactUpsert",
    "CreatedField",
    "DeletedContact",
    "ListName",
    "Origin",
    "RecentEvent",
    "RequestedStatus",
    "Source",
    "Subscription",
    "TagName",
    "TagsAdd",
    "UpsertedContact",
]

Identifier = Annotated[str, StringConstraints(max_length=320)]
# Printable text without surrounding white space (as tag and event names).
PRINTABLE_TEXT = r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$"
# Any text without control characters or surrounding white space ("premium",
# "KE", "VIP customer"), as `tag "..."` in rules can name it.
TagName = Annotated[str, StringConstraints(pattern=PRINTABLE_TEXT, min_length=1, max_length=100)]
Source = Annotated[str, StringConstraints(pattern=PRINTABLE_TEXT, min_length=1, max_length=100)]
# What a write that names no source records as the origin of the values it sets.
DEFAULT_SOURCE = "api"
# A list's name (/v1/lists): letters, digits and `_.-`, safe in a URL path
# and in `subscribed "NAME"`.
ListName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", min_length=1, max_length=100)
]
# What a request may ask a contact's status on a list to be (nudgel.api.lists.subscriptions).
RequestedStatus = Literal["subscribed", "unsubscribed", "bounced"]
EXAMPLE: dict[str, Any] = {
    "email": "ada@example.co.ke",
    "phone": "+254712345678",
    "name": "Ada Wanjiku",
    "tags": ["premium", "KE"],
    "fields": {"plan": "pro", "company": "Acme Ltd"},
}


class ContactTraits(BaseModel):
    """Profile attributes and custom field values, applied as an upsert.

    The body of ``POST /v1/contacts`` (with ``source``) and the ``traits`` of an
    event: one model, so both are validated the same way.
    """

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

    @field_validator("name")
    @classmethod
    def _trimmed_name(cls, value: str | None) -> str | None:
        # Blank means "not given", as for every other value: it never clears a name.
        if value is None:
            return None
        return value.strip() or None


class ContactUpsert(ContactTraits):
    """Create or update the contact these identifiers name (merging several into one)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{**EXAMPLE, "source": "form"}]}
    )

    source: Source = Field(
        default=DEFAULT_SOURCE,
        description="Where the values come from (`form`, `api`, `ecommerce`, `campaign`,"
        " `page` or a custom name): recorded as the origin of each value this request"
        " changes. Default `api`.",
    )
    subscriptions: dict[ListName, RequestedStatus] = Field(
        default_factory=dict,
        max_length=100,
        description='The contact\'s status on lists, e.g. `{"newsletter": "subscribed"}`:'
        " `subscribed` subscribes (on a double opt-in list: `pending` and a confirmation email,"
        " unless already subscribed or pending), `unsubscribed` and `bounced` set that status."
        " Unknown lists are 422. Each change is a `list.<status>` event on the timeline and a"
        " webhook event, with the request's `source`.",
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


class CreatedField(BaseModel):
    object: Literal["field"] = "field"
    name: str
    type: str
    created_at: datetime


class UpsertedContact(ContactOut):
    created_fields: list[CreatedField] = Field(
        default_factory=list,
        description="Custom fields this write created because the workspace had not defined"
        " them (type inferred from the value; each also a `field.created` event).",
    )


class Origin(BaseModel):
    source: str = Field(description="The source of the write that set the value.")
    at: datetime = Field(
        description="When the service stored the value (the server's time of the write, in"
        " UTC; not the `at` of the event that carried it)."
    )


class ScoreView(BaseModel):
    value: str = Field(description='The score now, an exact decimal as text (e.g. `"35"`).')
    change_30d: str = Field(description="value minus the value 30 days ago.")
    change_60d: str = Field(description="value minus the value 60 days ago.")
    change_90d: str = Field(description="value minus the value 90 days ago.")


class ContactDetail(ContactOut):
    recent_events: list[RecentEvent] = Field(description="The latest events, newest first.")
    stage: str | None = Field(
        default=None,
        description="The lifecycle stage of the deployed rules (it only moves forward).",
    )
    segments: list[str] = Field(
        default_factory=list, description="The segments the contact is in now, sorted."
    )
    scores: dict[str, ScoreView] = Field(
        default_factory=dict,
        description="Each score model's value, with its change over 30, 60 and 90 days (from the"
        " score's history; before its first change a score counts as 0).",
    )
    first_seen: datetime | None = Field(
        description="The earliest `at` on the contact's timeline (every event it shows, those"
        " a merge brought over and `contact.merged` included); `null` without events."
        " `created_at` is when the profile was created, which may be later or earlier."
    )
    last_seen: datetime | None = Field(
        description="The latest `at` on the contact's timeline; `null` without events."
    )
    event_counts: dict[str, int] = Field(
        description='The number of events on the timeline by name, e.g. `{"order.placed": 3}`.'
    )
    sources: list[str] = Field(
        description="Every source seen on the timeline's events and in `origins`, sorted."
    )
    origins: dict[str, Origin] = Field(
        description="Where each value of the profile came from: keyed by attribute (`email`,"
        " `phone`, `whatsapp_id`, `external_id`, `name`, `push_tokens`) or by `fields.` and the"
        " custom field's name (e.g. `fields.plan`), the source and time of the write that last"
        " changed it. A write that resends a stored value keeps its origin; a merge keeps the"
        " origin of each value that wins. `push_tokens` is the write that last added a token."
        " Values stored before origins were recorded have no entry."
    )


class DeletedContact(BaseModel):
    object: Literal["contact"] = "contact"
    id: str
    deleted: Literal[True] = True
