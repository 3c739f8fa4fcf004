"""API keys: making them, storing them, listing, expiring and revoking them.

A key is ``sk_live_<token>`` or ``sk_test_<token>`` where the token is 32
random bytes (``secrets.token_urlsafe(32)``). Only its SHA-256 is stored. A slow
password hash (bcrypt, argon2) exists to make guessing low-entropy secrets
expensive; a 256-bit random token cannot be guessed however fast the hash is,
so plain SHA-256 is as safe here, and it lets the lookup be one indexed equality
on ``api_keys.hash`` per request.

A key belongs to one mode of a workspace: the workspace name has a row per mode
(migration 0010), so test and live keys never see each other's data. A key
may expire (rotation: create the new key, let the old one expire) and may be
restricted to :data:`SCOPES`; no scopes is a full key, which alone may manage
keys.

The CLI uses the synchronous functions; the API the ``async`` ones, over the
same SQL.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

__all__ = [
    "SCOPES",
    "IssuedKey",
    "KeyInfo",
    "KeyMode",
    "Scope",
    "create_key",
    "create_key_async",
    "hash_key",
    "key_id_text",
    "list_keys",
    "list_keys_sync",
    "revoke_key",
    "revoke_key_by_id",
    "revoke_key_id_sync",
    "rotate_key",
    "workspace_id_of",
]

KeyMode = Literal["live", "test"]
Scope = Literal["read", "write", "ingest"]
SCOPES: tuple[Scope, ...] = get_args(Scope)

# Shown in listings so people can tell keys apart: "sk_live_" plus 4 token chars.
_PREFIX_CHARS = 4


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: int
    workspace_id: int
    mode: KeyMode
    prefix: str
    secret: str  # the full key: shown once, never stored
    name: str | None = None
    scopes: tuple[Scope, ...] | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    mode: KeyMode
    prefix: str
    name: str | None
    scopes: tuple[Scope, ...] | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id_text(key_id: int) -> str:
    return f"key_{key_id}"


def _new_secret(mode: KeyMode) -> tuple[str, str]:
    secret = f"sk_{mode}_{secrets.token_urlsafe(32)}"
    return secret, secret[: len(f"sk_{mode}_") + _PREFIX_CHARS]


# ON CONFLICT DO UPDATE (a no-op update) so RETURNING also yields an existing
# workspace's id, race-free against a concurrent create.
_WORKSPACE = (
    "INSERT INTO workspaces (name, mode) VALUES (%s, %s)"
    " ON CONFLICT (name, mode) DO UPDATE SET name = EXCLUDED.name RETURNING id"
)
_INSERT = (
    "INSERT INTO api_keys (workspace_id, mode, prefix, hash, name, scopes, expires_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"
)


def _insert_params(
    workspace_id: int,
    mode: KeyMode,
    name: str | None,
    scopes: Sequence[Scope] | None,
    expires_at: datetime | None,
) -> tuple[tuple[Any, ...], str, str]:
    secret, prefix = _new_secret(mode)
    scope_list = sorted(set(scopes)) if scopes else None
    return (
        (workspace_id, mode, prefix, hash_key(secret), name, scope_list, expires_at),
        secret,
        prefix,
    )


def create_key(
    conn: psycopg.Connection,
    workspace: str,
    mode: KeyMode = "live",
    *,
    name: str | None = None,
    scopes: Sequence[Scope] | None = None,
    expires_at: datetime | None = None,
) -> IssuedKey:
    """Create a key for ``workspace`` in ``mode`` (creating that workspace if new); commits."""
    with conn.transaction():
        row = conn.execute(_WORKSPACE, (workspace, mode)).fetchone()
        assert row is not None
        workspace_id = int(row[0])
        params, secret, prefix = _insert_params(workspace_id, mode, name, scopes, expires_at)
        key_row = conn.execute(_INSERT, params).fetchone()
        assert key_row is not None
    return IssuedKey(
        int(key_row[0]),
        workspace_id,
        mode,
        prefix,
        secret,
        name,
        tuple(params[5]) if params[5] else None,
        expires_at,
    )


async def create_key_async(
    conn: AsyncConnection,
    workspace_id: int,
    mode: KeyMode,
    *,
    name: str | None,
    scopes: Sequence[Scope] | None,
    expires_at: datetime | None,
) -> IssuedKey:
    """Another key of the workspace (and mode) ``workspace_id``, in the caller's transaction."""
    params, secret, prefix = _insert_params(workspace_id, mode, name, scopes, expires_at)
    cur = await conn.execute(_INSERT, params)
    row = await cur.fetchone()
    assert row is not None
    scope_list = params[5]
    return IssuedKey(
        int(row[0]),
        workspace_id,
        mode,
        prefix,
        secret,
        name,
        tuple(scope_list) if scope_list else None,
        expires_at,
    )


_INFO_COLUMNS = "id, mode, prefix, name, scopes, created_at, last_used_at, expires_at, revoked_at"
_LIST = (
    f"SELECT {_INFO_COLUMNS} FROM api_keys WHERE workspace_id = %s"
    " AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s"
)
_REVOKE_BY_ID = (
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
    f" WHERE id = %s AND workspace_id = %s RETURNING {_INFO_COLUMNS}"
)


def _info(row: dict[str, Any]) -> KeyInfo:
    return KeyInfo(**{**row, "scopes": tuple(row["scopes"]) if row["scopes"] else None})


async def list_keys(
    conn: AsyncConnection, workspace_id: int, after_id: int | None, limit: int
) -> list[KeyInfo]:
    """The workspace's keys (revoked ones too, marked), in id order."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_LIST, (workspace_id, after_id, after_id, limit))
    return [_info(row) for row in await cur.fetchall()]


async def revoke_key_by_id(conn: AsyncConnection, workspace_id: int, key_id: int) -> KeyInfo | None:
    """Revoke the workspace's key ``key_id`` (at once); None when there is no such key."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_REVOKE_BY_ID, (key_id, workspace_id))
    row = await cur.fetchone()
    return None if row is None else _info(row)


async def rotate_key(
    conn: AsyncConnection, workspace_id: int, key_id: int, overlap: timedelta
) -> IssuedKey | None:
    """A new key like ``key_id`` (same mode, name and scopes); the old one stays valid
    for ``overlap`` (or until its own expiry, if sooner). None: no such active key.
    In the caller's transaction."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "UPDATE api_keys SET expires_at = least(expires_at, now() + %s)"
        " WHERE id = %s AND workspace_id = %s AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())"
        " RETURNING mode, name, scopes",
        (overlap, key_id, workspace_id),
    )
    old = await cur.fetchone()
    if old is None:
        return None
    return await create_key_async(
        conn, workspace_id, old["mode"], name=old["name"], scopes=old["scopes"], expires_at=None
    )


def workspace_id_of(conn: psycopg.Connection, workspace: str, mode: KeyMode) -> int | None:
    row = conn.execute(
        "SELECT id FROM workspaces WHERE name = %s AND mode = %s", (workspace, mode)
    ).fetchone()
    return None if row is None else int(row[0])


def list_keys_sync(conn: psycopg.Connection, workspace_id: int) -> list[KeyInfo]:
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(_LIST, (workspace_id, None, None, 10_000))
    return [_info(row) for row in cur.fetchall()]


def revoke_key_id_sync(conn: psycopg.Connection, workspace_id: int, key_id: int) -> bool:
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(_REVOKE_BY_ID, (key_id, workspace_id))
    return cur.fetchone() is not None


def revoke_key(conn: psycopg.Connection, key: str) -> bool:
    """Revoke a key given in full; False when it is unknown or already revoked. Commits."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE hash = %s AND revoked_at IS NULL"
            " RETURNING id",
            (hash_key(key),),
        ).fetchone()
    return row is not None
