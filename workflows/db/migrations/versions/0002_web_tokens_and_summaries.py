"""Web browser and REST API: API tokens (hashed) and candidate summaries (the indexed, ranked table).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Written out in plain SQLAlchemy types (no imports from workflows.db.models), like 0001. ``candidate_summaries`` is
derived data: ``Store.refresh_summaries`` fills it from ``results``, so the upgrade leaves it empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HASH = sa.String(length=64)
UTC = sa.DateTime(timezone=True)

_SUMMARY_INDEXED = (
    "candidate_id",
    "formula",
    "working_ion",
    "latest_result_id",
    "conductivity_300K_mS_cm",
    "activation_energy_eV",
    "percolation_barrier_eV",
    "n_flags",
    "score",
)


def upgrade() -> None:
    op.create_table(
        "candidate_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("model_sha256", HASH, nullable=False),
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("formula", sa.Text(), nullable=False),
        sa.Column("working_ion", sa.String(length=3), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("elements", sa.Text(), nullable=False),
        sa.Column("transport_result_id", sa.Integer(), nullable=True),
        sa.Column("neb_result_id", sa.Integer(), nullable=True),
        sa.Column("latest_result_id", sa.Integer(), nullable=False),
        sa.Column("conductivity_300K_mS_cm", sa.Double(), nullable=True),
        sa.Column("conductivity_300K_ci95_lo_mS_cm", sa.Double(), nullable=True),
        sa.Column("conductivity_300K_ci95_hi_mS_cm", sa.Double(), nullable=True),
        sa.Column("activation_energy_eV", sa.Double(), nullable=True),
        sa.Column("activation_energy_ci95_lo_eV", sa.Double(), nullable=True),
        sa.Column("activation_energy_ci95_hi_eV", sa.Double(), nullable=True),
        sa.Column("migration_barrier_eV", sa.Double(), nullable=True),
        sa.Column("percolation_barrier_eV", sa.Double(), nullable=True),
        sa.Column("percolation_dimension", sa.Integer(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("n_flags", sa.Integer(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("updated_utc", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"],
            ["candidates.id"],
            name=op.f("fk_candidate_summaries_candidate_id_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["transport_result_id"], ["results.id"], name=op.f("fk_candidate_summaries_transport_result_id_results")
        ),
        sa.ForeignKeyConstraint(["neb_result_id"], ["results.id"], name=op.f("fk_candidate_summaries_neb_result_id_results")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidate_summaries")),
        sa.UniqueConstraint("candidate_id", "model_sha256", name=op.f("uq_candidate_summaries_candidate_id_model_sha256")),
    )
    for column in _SUMMARY_INDEXED:
        op.create_index(op.f(f"ix_candidate_summaries_{column}"), "candidate_summaries", [column])

    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_sha256", HASH, nullable=False),
        sa.Column("created_utc", UTC, nullable=False),
        sa.Column("last_used_utc", UTC, nullable=True),
        sa.Column("revoked_utc", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("token_id", name=op.f("uq_tokens_token_id")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_tokens_token_sha256")),
    )


def downgrade() -> None:
    op.drop_table("tokens")
    op.drop_table("candidate_summaries")
