"""Initial schema: jobs, candidates, job_candidates, tasks, results.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Written out in plain SQLAlchemy types (no imports from workflows.db.models), so this revision keeps creating the
same schema whatever later revisions change in the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

HASH = sa.String(length=64)
UTC = sa.DateTime(timezone=True)


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


STATES = ("pending", "running", "done", "failed", "cancelled")
STAGES = ("transport", "neb")


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("structure_hash", HASH, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("formula", sa.Text(), nullable=False),
        sa.Column("working_ion", sa.String(length=3), nullable=False),
        sa.Column("working_ion_charge", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("n_atoms", sa.Integer(), nullable=False),
        sa.Column("cif", sa.Text(), nullable=True),
        sa.Column("metadata_json", sa.JSON(), nullable=False),
        sa.Column("created_utc", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("structure_hash", name=op.f("uq_candidates_structure_hash")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("spec_json", sa.JSON(), nullable=False),
        sa.Column("spec_hash", HASH, nullable=False),
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("model_sha256", HASH, nullable=True),
        sa.Column("status", _enum("job_status", *STATES), nullable=False),
        sa.Column("created_utc", UTC, nullable=False),
        sa.Column("updated_utc", UTC, nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("driver_pid", sa.Integer(), nullable=True),
        sa.Column("driver_host", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])
    op.create_table(
        "job_candidates",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_job_candidates_candidate_id_candidates")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_candidates_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "candidate_id", name=op.f("pk_job_candidates")),
    )
    op.create_index(op.f("ix_job_candidates_candidate_id"), "job_candidates", ["candidate_id"])
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_key", HASH, nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("stage", _enum("stage", *STAGES), nullable=False),
        sa.Column("structure_hash", HASH, nullable=False),
        sa.Column("protocol_json", sa.JSON(), nullable=True),
        sa.Column("protocol_hash", HASH, nullable=False),
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("model_sha256", HASH, nullable=False),
        sa.Column("code_version", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("document_path", sa.Text(), nullable=True),
        sa.Column("created_utc", UTC, nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("conductivity_300K_mS_cm", sa.Double(), nullable=True),
        sa.Column("conductivity_300K_ci95_lo_mS_cm", sa.Double(), nullable=True),
        sa.Column("conductivity_300K_ci95_hi_mS_cm", sa.Double(), nullable=True),
        sa.Column("diffusivity_300K_cm2_s", sa.Double(), nullable=True),
        sa.Column("diffusivity_300K_ci95_lo_cm2_s", sa.Double(), nullable=True),
        sa.Column("diffusivity_300K_ci95_hi_cm2_s", sa.Double(), nullable=True),
        sa.Column("activation_energy_eV", sa.Double(), nullable=True),
        sa.Column("activation_energy_ci95_lo_eV", sa.Double(), nullable=True),
        sa.Column("activation_energy_ci95_hi_eV", sa.Double(), nullable=True),
        sa.Column("haven_ratio_mean", sa.Double(), nullable=True),
        sa.Column("max_temperature_conductivity_mS_cm", sa.Double(), nullable=True),
        sa.Column("migration_barrier_eV", sa.Double(), nullable=True),
        sa.Column("percolation_1d_eV", sa.Double(), nullable=True),
        sa.Column("percolation_2d_eV", sa.Double(), nullable=True),
        sa.Column("percolation_3d_eV", sa.Double(), nullable=True),
        sa.Column("n_hops_converged", sa.Integer(), nullable=True),
        sa.Column("n_hops_total", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.id"], name=op.f("fk_results_candidate_id_candidates")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("task_key", name=op.f("uq_results_task_key")),
    )
    op.create_index(op.f("ix_results_candidate_id"), "results", ["candidate_id"])
    op.create_index(op.f("ix_results_structure_hash"), "results", ["structure_hash"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("stage", _enum("stage", *STAGES), nullable=False),
        sa.Column("task_key", HASH, nullable=False),
        sa.Column("state", _enum("task_state", *STATES), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("progress_json", sa.JSON(), nullable=True),
        sa.Column("started_utc", UTC, nullable=True),
        sa.Column("finished_utc", UTC, nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("reused_result", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.id"], name=op.f("fk_tasks_candidate_id_candidates")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_tasks_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("job_id", "task_key", name=op.f("uq_tasks_job_id_task_key")),
    )
    op.create_index(op.f("ix_tasks_candidate_id"), "tasks", ["candidate_id"])
    op.create_index("ix_tasks_job_id_state", "tasks", ["job_id", "state"])
    op.create_index(op.f("ix_tasks_task_key"), "tasks", ["task_key"])


def downgrade() -> None:
    for table in ("tasks", "results", "job_candidates", "jobs", "candidates"):
        op.drop_table(table)
