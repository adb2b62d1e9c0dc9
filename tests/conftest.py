"""Shared fixtures: an isolated data directory per test and tiny MACE models built in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny test models gain nothing from a second thread, and an oversubscribed core makes torch's
# thread pool spin (10× slower when another process is busy). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

LIPSCL = [3, 15, 16, 17]  # Li, P, S, Cl


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own IONSCREEN_HOME and mace cache; nothing touches the user's."""
    for key in list(os.environ):
        if key.startswith("IONSCREEN_"):
            monkeypatch.delenv(key)
    home = tmp_path / "ionscreen-home"
    monkeypatch.setenv("IONSCREEN_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return home


@pytest.fixture
def settings(isolated_home):
    from mlip.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny float64 MACE model for Li, P, S, Cl (untrusted until a test trusts it)."""
    from mlip.testing import build_mace, save_model

    return save_model(build_mace(LIPSCL, seed=1), tmp_path_factory.mktemp("models") / "tiny-lipscl.model")


@pytest.fixture
def tiny_model_copy(tiny_model_file, tmp_path) -> Path:
    """A private copy of the tiny model file that a test may trust, move or tamper with."""
    dst = tmp_path / "tiny.model"
    dst.write_bytes(tiny_model_file.read_bytes())
    return dst
