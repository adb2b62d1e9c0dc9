"""OPTIMADE for the candidate database: ``/optimade/v1/`` served by ``ionscreen serve`` (``routes.py``), the filter
language translated to SQL (``filters.py``), the served properties (``properties.py``) and the structure documents,
also written as a file by ``ionscreen results JOB --format optimade`` (``entries.py``)."""

from __future__ import annotations

from workflows.web.optimade.routes import router

__all__ = ["router"]
