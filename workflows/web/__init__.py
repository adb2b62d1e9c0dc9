"""The candidate browser and REST API served by ``ionscreen serve``: FastAPI, server-rendered Jinja2 pages, vendored
JavaScript (works with no internet), token-authenticated writes. ``create_app`` builds the application.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from workflows.web.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
