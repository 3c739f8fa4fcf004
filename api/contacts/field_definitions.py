"""The custom fields a workspace's contacts may carry: create, list, get, delete.

A field is declared once with a type; rules read it as ``fields.NAME`` and
contact upserts validate values against it (``nudgel.api.contacts.fields``).
A field the deployed rules read cannot be deleted.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from nudgel.api.contacts.definitions import Definitions
from nudgel.api.contacts.fields import field_types
from nudgel.api.db.rows import fetch_one
from nudgel.api.problems import ProblemError
from nudgel.api.rules.compiling import compile_for_workspace
from nudgel.api.rules.store import current_rules
from nudgel.api.transaction import Transaction
from nudgel.dsl.parser import KEYWORDS
from psycopg import AsyncConnection
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = ["FIELDS", "DeletedField", "FieldCreate", "FieldDefinition", "delete_field"]

FieldType = Literal["text", "number", "bool", "date", "timestamp", "email", "url", "json"]
# An identifier of the rules language, so `fields.NAME` can name it.
FieldName = Annotated[
    str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", min_length=1, max_length=63)
]


class FieldCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "ltv", "type": "number"}]}
    )

    name: FieldName = Field(
        description="Lower-case identifier, `[a-z_][a-z0-9_]*`, not a keyword of the rules"
        " language (`segment`, `count`, `tag` ...), so rules can name it `fields.NAME`."
    )

    @field_validator("name")
    @classmethod
    def _not_a_keyword(cls, name: str) -> str:
        if name in KEYWORDS:
            raise ValueError(f"`{name}` is a keyword of the rules language: choose another name")
        return name

    type: FieldType = Field(description="The type values must have.")


class FieldDefinition(BaseModel):
    object: Literal["field"] = "field"
    name: str
    type: FieldType
    created_at: datetime


class DeletedField(BaseModel):
    object: Literal["field"] = "field"
    name: str
    deleted: Literal[True] = True


# Create (``field.created``), list, get.
FIELDS = Definitions("field", "field_definitions", FieldDefinition, ("name", "type", "created_at"))


async def _refuse_if_rules_read(conn: AsyncConnection, workspace_id: int, name: str) -> None:
    """409 when the deployed rules would no longer compile without the field."""
    deployed = await current_rules(conn, workspace_id)
    if deployed is None:
        return
    definitions = await field_types(conn, workspace_id)
    definitions.pop(name, None)
    # CPU-bound (seconds for thousands of segments): not on the event loop.
    result = await asyncio.to_thread(compile_for_workspace, deployed.files, definitions)
    if result.rules is None:
        first = next(d for d in result.diagnostics if d.is_error)
        raise ProblemError.conflict(
            f"Field {name!r} is used by the deployed rules (v{deployed.version}):"
            f" {first.span.file}:{first.span.line}:{first.span.column}: {first.message}."
            " Deploy rules that do not use it first."
        )


async def delete_field(tx: Transaction, name: str) -> DeletedField:
    """Drop the definition (404 if none; 409 while the deployed rules read it);
    contacts keep their values. ``field.deleted``."""
    await _refuse_if_rules_read(tx.conn, tx.workspace_id, name)
    field = await fetch_one(
        tx.conn,
        FieldDefinition,
        "DELETE FROM field_definitions WHERE workspace_id = %s AND name = %s"
        " RETURNING name, type, created_at",
        (tx.workspace_id, name),
    )
    if field is None:
        raise FIELDS.not_found(name)
    await tx.emit("field.deleted", field.model_dump(mode="json"))
    return DeletedField(name=name)
