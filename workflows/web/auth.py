"""Who may do what: every write needs an API token (``Authorization: Bearer isk_...``); reads are open unless
``api_reads_require_token`` is set, in which case reads take the header or the browser's login cookie.

No token → 401 (with ``WWW-Authenticate: Bearer``); a token that is malformed, unknown or revoked → 403. Writes
ignore the cookie on purpose: a browser that visits another site cannot be made to send the bearer header, so
cross-site request forgery cannot write.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workflows.db.tokens import TokenRecord

COOKIE_NAME = "ionscreen_token"

bearer = HTTPBearer(auto_error=False, description="An API token from `ionscreen tokens create NAME`.")


class LoginRequired(Exception):
    """Raised for an HTML page when reads need a token and the browser has none (answered with the login page)."""

    def __init__(self, status_code: int, detail: str):
        self.status_code, self.detail = status_code, detail


def _check(request: Request, token: str | None, what: str) -> TokenRecord:
    if not token:
        raise HTTPException(401, f"{what} needs an API token: send 'Authorization: Bearer <token>' "
                                 "(create one with `ionscreen tokens create NAME`)",
                            headers={"WWW-Authenticate": "Bearer"})
    record = request.app.state.store.tokens.verify(token)
    if record is None:
        raise HTTPException(403, "the API token is not valid (unknown, malformed or revoked)")
    return record


def require_write(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenRecord:
    """Dependency of every write route."""
    return _check(request, credentials.credentials if credentials else None, "this request changes data and")


def require_read(request: Request,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> TokenRecord | None:
    """Dependency of every API read route: a no-op unless reads are closed."""
    if not request.app.state.reads_require_token:
        return None
    token = credentials.credentials if credentials else request.cookies.get(COOKIE_NAME)
    return _check(request, token, "reading this server")


def require_page_read(request: Request) -> TokenRecord | None:
    """Dependency of HTML pages: like ``require_read``, but a browser without a token gets the login page."""
    if not request.app.state.reads_require_token:
        return None
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME)
    try:
        return _check(request, token, "reading this server")
    except HTTPException as err:
        raise LoginRequired(err.status_code, str(err.detail)) from None


__all__ = ["COOKIE_NAME", "LoginRequired", "require_page_read", "require_read", "require_write"]
