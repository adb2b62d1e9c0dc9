"""Server paths kept out of responses: error messages, result documents and pages name files under
``$IONSCREEN_HOME`` (and other server directories, the database URL and the MLflow tracking URI) by placeholders
instead.

Messages from the layers below (the database's "no job X in sqlite:////srv/.../ionscreen.db", a planner's "model
file /srv/.../x.model does not exist", NEB documents with absolute paths) are useful and stay; only the server's
directory layout is replaced. This runs as ASGI middleware on every textual response (JSON, HTML, plain text,
CSV, CIF), so a message from any layer, a 404 page or a served document is covered without each route having to
remember. Images, scripts and stylesheets pass untouched.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

HOME_PLACEHOLDER = "$IONSCREEN_HOME"

#: Response media types whose bodies are rewritten (anything else streams through untouched).
TEXT_MEDIA_TYPES = {"application/json", "text/html", "text/plain", "text/csv", "chemical/x-cif",
                    "application/yaml", "text/yaml"}


def server_roots(home: Path, database_urls: Iterable[str] = (), tracking_uris: Iterable[str] = ()) -> dict[str, str]:
    """Absolute server directories → placeholders: the data directory, the code, the Python installation, the
    user's home and the temporary directory (each as given and resolved); the database's URLs (as given and
    with the password masked, as the database layer's messages print them) → ``<database>``; MLflow tracking URIs
    (likewise) → ``<mlflow>``."""
    code = Path(__file__).resolve().parents[2]
    named = [(home, HOME_PLACEHOLDER), (code, "<ionscreen>"), (Path(sys.prefix), "<python>"),
             (Path(sys.base_prefix), "<python>"), (Path(tempfile.gettempdir()), "<tmp>")]
    try:
        named.append((Path.home(), "~"))
    except RuntimeError:  # no home directory for this user
        pass
    roots: dict[str, str] = {}
    for path, placeholder in named:
        for variant in {str(path), str(path.resolve())}:
            if variant.startswith("/") and variant.rstrip("/"):  # never "/" itself
                roots.setdefault(variant.rstrip("/"), placeholder)
    for url in database_urls:
        roots.update(dict.fromkeys(_url_variants(url), "<database>"))
    for url in filter(None, tracking_uris):  # an empty URI (MLflow's default store) is no text to replace
        roots.update(dict.fromkeys(_url_variants(url), "<mlflow>"))
    return roots


def _url_variants(url: str) -> set[str]:
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can read: only the text as given
        return {url}
    return {url, parsed.render_as_string(hide_password=True), parsed.render_as_string(hide_password=False)}


class PathRedactor:
    """Replaces server roots in text (longest first); a root counts only as a whole path (``/srv/home`` does not
    match inside ``/srv/home2`` or ``/x/srv/home``), also after a URL scheme (``sqlite:////srv/home/...``)."""

    def __init__(self, roots: dict[str, str]):
        self.roots = dict(sorted(roots.items(), key=lambda item: -len(item[0])))
        self._bytes = {root.encode(): placeholder.encode() for root, placeholder in self.roots.items()}
        alternatives = b"|".join(re.escape(root) for root in self._bytes)
        self._pattern = re.compile(rb"(?:(?<=://)|(?<=:///)|(?<![\w./-]))(" + alternatives + rb")(?![\w.-])")

    @classmethod
    def for_server(cls, home: Path, database_urls: Iterable[str] = (),
                   tracking_uris: Iterable[str] = ()) -> PathRedactor:
        return cls(server_roots(home, database_urls, tracking_uris))

    def redact_bytes(self, data: bytes) -> bytes:
        return self._pattern.sub(lambda m: self._bytes[m.group(1)], data)

    def redact(self, text: str) -> str:
        return self.redact_bytes(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")


def _media_type(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower().decode("latin-1")
    return ""


class RedactPaths:
    """ASGI middleware: textual response bodies are buffered, redacted and sent with a corrected Content-Length."""

    def __init__(self, app, redactor: PathRedactor):
        self.app, self.redactor = app, redactor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
            return
        # files must arrive as body messages to be read: hide a server's zero-copy "pathsend" extension
        extensions = {k: v for k, v in (scope.get("extensions") or {}).items() if k != "http.response.pathsend"}
        scope = {**scope, "extensions": extensions}
        start: dict | None = None
        chunks: list[bytes] = []

        async def redacting_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                if _media_type(message.get("headers", [])) in TEXT_MEDIA_TYPES:
                    start = message
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_redacted(send, start, b"".join(chunks))
            else:
                await send(message)

        await self.app(scope, receive, redacting_send)

    async def _send_redacted(self, send, start: dict, body: bytes) -> None:
        body = self.redactor.redact_bytes(body)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


__all__ = ["HOME_PLACEHOLDER", "TEXT_MEDIA_TYPES", "PathRedactor", "RedactPaths", "server_roots"]
