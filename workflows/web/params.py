"""Path parameters shared by the API and the pages, validated before any handler or database sees them.

Database ids are 32-bit on PostgreSQL and 64-bit on SQLite; an id outside ``1 ≤ id < 2**31`` can name no row, and
handed to the database it fails there (out-of-range integer, 500). Such ids are refused with 422, naming the
parameter and the limit. Job ids are uuid4 hex (or a prefix of at least 4 digits), which also keeps NUL and other
characters PostgreSQL refuses away from its queries.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

#: Exclusive upper bound of every integer id in a URL (PostgreSQL ``integer``).
ID_LIMIT = 2**31
JOB_ID_PATTERN = r"^[0-9a-f]{4,32}$"


def _id(what: str) -> Path:
    return Path(ge=1, lt=ID_LIMIT, description=f"The {what}'s id (1 ≤ id < 2**31).")


CandidateId = Annotated[int, _id("candidate")]
ResultId = Annotated[int, _id("result")]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, min_length=4, max_length=32,
                            description="The job's id (32 hex digits) or a unique prefix of at least 4.")]
ModelSha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64,
                                  description="The model's SHA-256 (64 lowercase hex digits).")]
HopIndex = Annotated[int, Path(ge=0, lt=ID_LIMIT, description="The hop's index in the NEB document (from 0).")]

__all__ = ["ID_LIMIT", "JOB_ID_PATTERN", "CandidateId", "HopIndex", "JobId", "ModelSha256", "ResultId"]
