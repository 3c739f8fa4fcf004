"""API keys: making them, storing them, revoking them.

A key is ``sk_live_<token>`` or ``sk_test_<token>`` where the token is 32
random bytes (``secrets.token_urlsafe(32)``). Only its SHA-256 is stored. A slow
password hash (bcrypt, argon2) exists to make guessing low-entropy secrets
expensive; a 256-bit random token cannot be guessed however fast the hash is,
so plain SHA-256 is as safe here, and it lets the lookup be one indexed equality
on ``api_keys.hash`` per request.

These functions are synchronous: the CLI uses them. The request path only
hashes (:func:`hash_key`) and reads, in ``nudgel.api.http.auth``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

import psycopg

__all__ = ["IssuedKey", "KeyMode", "create_key", "hash_key", "revoke_key"]

KeyMode = Literal["live", "test"]

# Shown in listings so people can tell keys apart: "sk_live_" plus 4 token chars.
_PREFIX_CHARS = 4


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: int
    workspace_id: int
    mode: KeyMode
    prefix: str
    secret: str  # the full key: shown once, never stored


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _new_secret(mode: KeyMode) -> str:
    return f"sk_{mode}_{secrets.token_urlsafe(32)}"


def create_key(conn: psycopg.Connection, workspace: str, mode: KeyMode = "live") -> IssuedKey:
    """Create a key for ``workspace`` (creating the workspace if it is new); commits."""
    secret = _new_secret(mode)
    prefix = secret[: len(f"sk_{mode}_") + _PREFIX_CHARS]
    with conn.transaction():
        # ON CONFLICT DO UPDATE (a no-op update) so RETURNING also yields an
        # existing workspace's id, race-free against a concurrent create.
        row = conn.execute(
            "INSERT INTO workspaces (name) VALUES (%s)"
            " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            (workspace,),
        ).fetchone()
        assert row is not None
        workspace_id = int(row[0])
        key_row = conn.execute(
            "INSERT INTO api_keys (workspace_id, mode, prefix, hash)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (workspace_id, mode, prefix, hash_key(secret)),
        ).fetchone()
        assert key_row is not None
    return IssuedKey(int(key_row[0]), workspace_id, mode, prefix, secret)


def revoke_key(conn: psycopg.Connection, key: str) -> bool:
    """Revoke a key given in full; False when it is unknown or already revoked. Commits."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE hash = %s AND revoked_at IS NULL"
            " RETURNING id",
            (hash_key(key),),
        ).fetchone()
    return row is not None
