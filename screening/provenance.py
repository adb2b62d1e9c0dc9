"""Provenance every result document carries: which model (reference and SHA-256) and which code made it. Each
stage's document extends it with what decides its numbers (a protocol hash and seed, or NEB parameters)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_ref: str | None = Field(None, description="Model reference as given (path, bundled:, models:/..., ase:).")
    model_sha256: str | None = Field(None, description="SHA-256 of the model's bytes (or of its code).")
    code_version: str = Field(description="ionscreen version (+ git commit).")
