"""Who may do what: every write needs an API token (``Authorization: Bearer isk_...``); reads are open unless
``api_reads_require_token`` is set, in which case reads take the header or a browser session (the cookie set by
signing in at ``/login``, see ``sessions.py``).

No token → 401 (with ``WWW-Authenticate: Bearer``); a token that is malformed, unknown or revoked → 403. Writes
ignore cookies on purpose: a browser that visits another site cannot be made to send the bearer header, so
cross-site request forgery cannot write. The session cookie holds a random session id, never the token, and a
session ends when its token is revoked.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workflows.db.tokens import TokenRecord
from workflows.web.sessions import SESSION_COOKIE, SessionStore

#: The cookie of earlier versions, which held the raw token; never read, deleted at sign-in and sign-out.
LEGACY_TOKEN_COOKIE = "ionscreen_token"

bearer = HTTPBearer(auto_error=False, description="An API token from `ionscreen tokens create NAME`.")


class LoginRequired(Exception):
    """Raised for an HTML page when reads need a token and the browser has none (answered with the login page)."""

    def __init__(self, status_code: int, detail: str):
        self.status_code, self.detail = status_code, detail


def _missing(what: str) -> HTTPException:
    return HTTPException(401, f"{what} needs an API token: send 'Authorization: Bearer <token>' "
                              "(create one with `ionscreen tokens create NAME`)", headers={"WWW-Authenticate": "Bearer"})


def _check(request: Request, token: str | None, what: str) -> TokenRecord:
    if not token:
        raise _missing(what)
    record = request.app.state.store.tokens.verify(token)
    if record is None:
        raise HTTPException(403, "the API token is not valid (unknown, malformed or revoked)")
    return record


def sessions(request: Request) -> SessionStore:
    return request.app.state.sessions


def session_token(request: Request) -> TokenRecord | None:
    """The active token behind the browser's session cookie, or None (no cookie, unknown or expired session, or its
    token revoked since; such a session is closed)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    session = sessions(request).lookup(session_id)
    if session is None:
        return None
    record = request.app.state.store.tokens.get_active(session.token_id)
    if record is None:
        sessions(request).close(session_id)
    return record


def _read_access(request: Request, token: str | None) -> TokenRecord:
    if token:
        return _check(request, token, "reading this server")
    record = session_token(request)
    if record is None:
        raise _missing("reading this server")
    return record


def require_write(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenRecord:
    """Dependency of every write route: the bearer header only, never a cookie."""
    return _check(request, credentials.credentials if credentials else None, "this request changes data and")


def require_read(request: Request,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenRecord | None:
    """Dependency of every API read route: a no-op unless reads are closed."""
    if not request.app.state.reads_require_token:
        return None
    return _read_access(request, credentials.credentials if credentials else None)


def require_page_read(request: Request) -> TokenRecord | None:
    """Dependency of HTML pages: like ``require_read``, but a browser without a token gets the login page."""
    if not request.app.state.reads_require_token:
        return None
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        return _read_access(request, token)
    except HTTPException as err:
        raise LoginRequired(err.status_code, str(err.detail)) from None


__all__ = ["LEGACY_TOKEN_COOKIE", "LoginRequired", "require_page_read", "require_read", "require_write",
           "session_token", "sessions"]
