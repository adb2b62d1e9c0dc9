"""``ionscreen serve`` (the candidate browser and REST API) and ``ionscreen tokens create|list|revoke``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

tokens_app = typer.Typer(help="API tokens: every write to the REST API needs one (reads too, if closed).",
                         no_args_is_help=True)


def _settings():
    from mlip.config import load_settings

    return load_settings()


def _store(settings):
    from workflows.db import Store

    return Store.open(settings.db_url)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    reads_require_token: Annotated[Optional[bool], typer.Option(
        "--reads-require-token/--open-reads",
        help="Close reads to token holders (default: the api_reads_require_token setting, false).")] = None,
    max_body_kb: Annotated[int, typer.Option(help="Largest request body accepted, KiB (larger: 413).")] = 1024,
    refresh_s: Annotated[float, typer.Option(help="How often new results are merged into the table, s.")] = 5.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    proxy_headers: Annotated[bool, typer.Option(
        "--proxy-headers/--no-proxy-headers",
        help="Behind a reverse proxy: take the client address and scheme from X-Forwarded-For/-Proto (so https at "
             "the proxy marks the session cookie Secure). Only from --forwarded-allow-ips.")] = False,
    forwarded_allow_ips: Annotated[str, typer.Option(
        help="Comma-separated addresses (or networks) of the proxies whose X-Forwarded-* headers are trusted; "
             "'*' trusts every client (only when nothing but the proxy can reach this port).")] = "127.0.0.1",
) -> None:
    """Serve the candidate browser (ranked table, candidate pages) and the REST API (docs at /docs)."""
    import uvicorn

    from mlip.config import mask_password
    from workflows.web import create_app

    settings = _settings()
    app = create_app(settings, max_body_bytes=max_body_kb * 1024, refresh_interval_s=refresh_s,
                     reads_require_token=reads_require_token)
    closed = app.state.reads_require_token
    typer.echo(f"ionscreen web on http://{host}:{port}/  (API docs: /docs; database {mask_password(settings.db_url)}; "
               f"reads {'need a token' if closed else 'open'}, writes need a token)", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not closed:
        typer.echo("note: listening beyond this machine with open reads; anyone who can reach it sees the results "
                   "(use --reads-require-token, or a reverse proxy with access control)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=proxy_headers,
                forwarded_allow_ips=forwarded_allow_ips)


@tokens_app.command("create")
def tokens_create(name: Annotated[str, typer.Argument(help="Who or what will use the token, e.g. alice or ci.")]) -> None:
    """Create a token and print it ONCE (only its SHA-256 is stored)."""
    record, token = _store(_settings()).tokens.create(name)
    typer.echo(token)
    typer.echo(f"token {record.token_id} for {record.name!r} created; it is shown only now — keep it secret. "
               "Send it as 'Authorization: Bearer <token>'.", err=True)


@tokens_app.command("list")
def tokens_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False) -> None:
    """Tokens (id, name, created, last used, revoked); never the tokens themselves."""
    records = _store(_settings()).tokens.list()
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    if not records:
        typer.echo("no tokens (create one with `ionscreen tokens create NAME`)")
        return
    for r in records:
        used = r.last_used_utc.strftime("%Y-%m-%d %H:%M") if r.last_used_utc else "never"
        state = f"revoked {r.revoked_utc:%Y-%m-%d %H:%M}" if r.revoked_utc else "active"
        typer.echo(f"{r.token_id}  {r.name:<24}  created {r.created_utc:%Y-%m-%d %H:%M}  last used {used}  {state}")


@tokens_app.command("revoke")
def tokens_revoke(token: Annotated[str, typer.Argument(help="Token id (8 hex digits) or the name of one active token.")]) -> None:
    """Revoke a token: requests with it are refused from now on."""
    record = _store(_settings()).tokens.revoke(token)
    typer.echo(f"revoked token {record.token_id} ({record.name})")


__all__ = ["serve", "tokens_app"]
