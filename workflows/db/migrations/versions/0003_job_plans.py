"""Job plans in the database: the typed plan of a job (pinned model, protocols, resources, ranking) beside its spec.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Jobs planned before this revision kept their plan in ``$IONSCREEN_HOME/jobs/<id>/plan.json``; the column stays
NULL for them and ``workflows.jobs.plan.load_plan`` reads that file once and stores it here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("plan_json", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("plan_json")
