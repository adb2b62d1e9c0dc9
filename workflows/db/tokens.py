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

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mlip.errors import InputError
from workflows.db.database import NotFoundError, Repository
from workflows.db.models import ApiToken, utc_now

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


class TokenRepository(Repository):
    """``store.tokens``: create (returns the token once), list, look up an active one by id, revoke, verify."""

    def create(self, name: str):
        """Store a new API token for ``name``; returns (TokenRecord, token). The token is not stored, only its hash."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InputError(f"a token name is 1-64 characters of letters, digits, space, '.', '_', '@', '-' "
                             f"starting with a letter or digit, got {name!r}")
        token_id, token = new_token()

        def work(session: Session):
            row = ApiToken(token_id=token_id, name=name, token_sha256=token_sha256(token), created_utc=utc_now())
            session.add(row)
            session.flush()
            return TokenRecord.model_validate(row)

        return self._run(work, write=True), token

    def list(self, *, include_revoked: bool = True):
        """Stored tokens (never the tokens themselves), oldest first."""
        query = sa.select(ApiToken).order_by(ApiToken.created_utc, ApiToken.id)
        if not include_revoked:
            query = query.where(ApiToken.revoked_utc.is_(None))
        return self._run(lambda s: [TokenRecord.model_validate(t) for t in s.scalars(query)], write=False)

    def get_active(self, token_id: str):
        """The active TokenRecord with this public id, or None (unknown or revoked)."""
        query = sa.select(ApiToken).where(ApiToken.token_id == token_id, ApiToken.revoked_utc.is_(None))

        def find(session: Session):
            found = session.scalar(query)
            return None if found is None else TokenRecord.model_validate(found)

        return self._run(find, write=False)

    def revoke(self, token_id_or_name: str):
        """Revoke a token by its id (8 hex digits) or by its name when one active token has it; returns it."""

        def work(session: Session):
            found = session.scalar(sa.select(ApiToken).where(ApiToken.token_id == token_id_or_name))
            if found is None:
                named = session.scalars(
                    sa.select(ApiToken).where(ApiToken.name == token_id_or_name, ApiToken.revoked_utc.is_(None))
                ).all()
                if len(named) > 1:
                    ids = ", ".join(t.token_id for t in named)
                    raise InputError(f"{len(named)} active tokens are named {token_id_or_name!r} ({ids}); "
                                     "revoke one by its id")
                found = named[0] if named else None
            if found is None:
                raise NotFoundError(f"no token with id or active name {token_id_or_name!r}; "
                                    "`ionscreen tokens list` shows them")
            if found.revoked_utc is None:
                found.revoked_utc = utc_now()
            session.flush()
            return TokenRecord.model_validate(found)

        return self._run(work, write=True)

    def verify(self, token: str, *, touch_after_s: float = 60.0):
        """The active TokenRecord whose hash matches ``token``, or None. Records the use (at most once a minute)."""

        if not looks_like_token(token):
            return None
        digest = token_sha256(token)

        def find(session: Session):
            found = session.scalar(
                sa.select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_utc.is_(None))
            )
            return None if found is None else TokenRecord.model_validate(found)

        def touch(session: Session) -> None:
            session.execute(sa.update(ApiToken).where(ApiToken.token_sha256 == digest).values(last_used_utc=now))

        record = self._run(find, write=False)  # a read first: most requests need no write lock
        if record is None:
            return None
        now = utc_now()
        if record.last_used_utc is None or (now - record.last_used_utc).total_seconds() > touch_after_s:
            self._run(touch, write=True)
            record = record.model_copy(update={"last_used_utc": now})
        return record


__all__ = ["NAME_PATTERN", "TOKEN_PREFIX", "TokenRecord", "TokenRepository", "looks_like_token", "new_token", "token_sha256"]
