"""One unit of change: a transaction with its outbox events and real-time evaluation.

Every capability that changes data does it through a :class:`Transaction`::

    await tx.emit("tag.created", data)        # outbox row, same transaction
    tx.touch(pk, Change("contact.tagged", tags={"vip"}))  # re-evaluate the rules

Before commit, :meth:`Transaction.reevaluate` re-evaluates the deployed rules
for every touched contact (``nudgel.api.rules.realtime``), so the change, its
outbox events and the new segment, score and stage state commit together; an
exception rolls all of it back. The HTTP layer opens one per request, with
idempotency (``nudgel.api.http.writes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nudgel.api.rules import realtime
from nudgel.api.rules.store import rules_and_now
from nudgel.api.webhooks import outbox
from psycopg import AsyncConnection

__all__ = ["Transaction"]


@dataclass
class Transaction:
    conn: AsyncConnection
    workspace_id: int
    _touched: dict[int, realtime.Change] = field(default_factory=dict, repr=False)

    async def emit(
        self, event_type: str, data: dict[str, Any], contact_pk: int | None = None
    ) -> str:
        """Record an event in the outbox, in this transaction."""
        return await outbox.record(self.conn, self.workspace_id, event_type, data, contact_pk)

    def touch(self, pk: int, change: realtime.Change) -> None:
        """Contact ``pk`` changed: its rule results are re-evaluated before commit."""
        known = self._touched.get(pk)
        if known is None:
            self._touched[pk] = change
        else:
            known.absorb(change)

    async def forget(self, pks: list[int], reason: str) -> None:
        """Contacts about to be deleted leave their segments (call before deleting)."""
        for pk in pks:
            self._touched.pop(pk, None)
        await realtime.forget(self.conn, self.workspace_id, pks, reason)

    async def reevaluate(self) -> None:
        if not self._touched:
            return
        deployed, now = await rules_and_now(self.conn, self.workspace_id)
        if deployed is None:
            self._touched.clear()
            return
        # In pk order, as every path that locks several contacts does.
        for pk in sorted(self._touched):
            await realtime.reevaluate(
                self.conn, self.workspace_id, pk, self._touched[pk], deployed=deployed, now=now
            )
        self._touched.clear()
