"""Who submitted each job, and which node ran each attempt of each task.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

On a shared job store (a team's PostgreSQL) a job records its submitter (``jobs.submitted_by``: the API token's
name, or ``user@host`` for the command line). On a Ray cluster a task records the node of its latest attempt
(``tasks.node``) and the story of every attempt (``tasks.attempts_json``: node, worker, start, end, outcome), so
``ionscreen jobs status`` can say where a task ran and why it ran again. Older rows have NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("submitted_by", sa.Text(), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("node", sa.Text(), nullable=True))
        batch.add_column(sa.Column("attempts_json", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("attempts_json")
        batch.drop_column("node")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("submitted_by")
