"""REST API tokens: how they are made and recognised. The database keeps only each token's SHA-256.

A token reads ``isk_<id>_<secret>``: ``<id>`` (8 hex digits) names it in listings and revocations, ``<secret>`` is
32 random bytes (``secrets.token_urlsafe``). With 256 bits of entropy a plain SHA-256 is a safe verifier (no salt
or slow hash needed: nobody can guess a preimage), and looking the hash up by a unique index is constant work.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

TOKEN_PREFIX = "isk"
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}_([0-9a-f]{{8}})_[A-Za-z0-9_-]{{43}}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


def new_token() -> tuple[str, str]:
    """(token id, token)."""
    token_id = secrets.token_hex(4)
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(text: str) -> bool:
    """Cheap shape check before any database work (rejects junk and over-long headers at once)."""
    return isinstance(text, str) and len(text) < 100 and _TOKEN.match(text) is not None


class TokenRecord(BaseModel):
    """A stored token (never the token itself)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    token_id: str = Field(description="Public id (the 8 hex digits after 'isk_').")
    name: str = Field(description="Who or what uses it.")
    created_utc: datetime
    last_used_utc: datetime | None = Field(description="Last authenticated request (updated at most once a minute).")
    revoked_utc: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_utc is None


__all__ = ["NAME_PATTERN", "TOKEN_PREFIX", "TokenRecord", "looks_like_token", "new_token", "token_sha256"]
