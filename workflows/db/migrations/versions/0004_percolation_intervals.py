"""Percolation barriers keep their NEB numerical interval: the ranking uses its upper end.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

The result table's summary columns follow ``screening.summaries.NebSummary``, whose percolation barriers are
measured quantities with intervals (``percolation_<d>d_ci95_lo_eV`` / ``_hi_eV``). Older rows have none (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = [f"percolation_{d}d_ci95_{end}_eV" for d in (1, 2, 3) for end in ("lo", "hi")]


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
