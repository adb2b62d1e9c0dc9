"""Browser sessions for a server with closed reads: the login cookie holds a random session id, never the API token.

Signing in with a token opens a session: 32 random bytes (``secrets.token_urlsafe``) go into the cookie, and the
server keeps only their SHA-256 with the id of the token that opened it and when it expires. A stolen cookie is
therefore no API token (it cannot write, and cannot be used from a script past its expiry or the token's
revocation), and signing out ends the session on the server, not only in the browser.

Sessions live in the server's memory (one ``ionscreen serve`` process): a restart signs everybody out, which costs a
sign-in and needs no database table.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "ionscreen_session"
DEFAULT_LIFETIME_S = 7 * 24 * 3600
DEFAULT_MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    token_id: str  # the API token that opened it
    expires_at: float  # on the store's clock


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    """Open, look up and close sessions (thread-safe; handlers run in a thread pool).

    At most ``max_sessions`` are kept: opening one more first drops expired ones, then the oldest."""

    def __init__(self, lifetime_s: float = DEFAULT_LIFETIME_S, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic):
        self.lifetime_s, self.max_sessions, self._clock = float(lifetime_s), int(max_sessions), clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, token_id: str) -> str:
        """A new session for the token ``token_id``; returns the session id for the cookie (shown only now)."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._make_room()
            self._sessions[_digest(session_id)] = Session(token_id, self._clock() + self.lifetime_s)
        return session_id

    def lookup(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, expired or closed)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _digest(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[key]
                session = None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)


__all__ = ["DEFAULT_LIFETIME_S", "SESSION_COOKIE", "Session", "SessionStore"]
