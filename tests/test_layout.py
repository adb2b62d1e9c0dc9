"""Workers × threads per node: configured, filled in from the cores, or measured (real processes) and cached."""

from __future__ import annotations

import json

import pytest

from mlip.loader import trust
from workflows.jobs.layout import Layout, resolve_layout
from workflows.jobs.spec import ResourcesSpec
from md_worker import li2s_cell


def test_configured_and_filled_layouts(monkeypatch):
    import workflows.jobs.layout as layout

    monkeypatch.setattr(layout, "cores", lambda: 8)
    common = dict(device="cpu", cluster=False, model_ref="unused", model_sha256=None, structures=[], home=None)
    assert resolve_layout(3, 2, **common) == Layout(3, 2, "configured")
    assert resolve_layout(2, None, **common) == Layout(2, 4, "filled")
    assert resolve_layout(None, 8, **common) == Layout(1, 8, "filled")
    assert resolve_layout(None, 3, **common) == Layout(2, 3, "filled")
    monkeypatch.setattr(layout, "cores", lambda: 1)
    assert resolve_layout(None, None, **common) == Layout(1, 1, "single core")


def test_job_file_auto_means_measured():
    assert ResourcesSpec.model_validate({"workers": "auto", "threads_per_worker": "AUTO"}).workers is None
    spec = ResourcesSpec.model_validate({})
    assert spec.workers is None and spec.threads_per_worker is None and spec.in_flight_limit is None
    assert ResourcesSpec.model_validate({"workers": 3}).in_flight_limit == 6
    with pytest.raises(ValueError):
        ResourcesSpec.model_validate({"workers": "many"})


@pytest.mark.slow
def test_layout_is_measured_in_real_processes_then_cached(tiny_model_copy, settings, monkeypatch):
    import workflows.jobs.layout as layout

    monkeypatch.setattr(layout, "cores", lambda: 2)
    loaded = trust(str(tiny_model_copy), settings)
    common = dict(device="cpu", cluster=False, model_ref=str(tiny_model_copy), model_sha256=loaded.sha256,
                  structures=[li2s_cell()], home=settings.home, dtype="float64")
    first = resolve_layout(None, None, **common)
    assert first.source == "measured" and set(first.atom_steps_per_s) == {"1x2", "2x1"}
    assert all(rate > 0 for rate in first.atom_steps_per_s.values())
    best = max(first.atom_steps_per_s.values())
    chosen = first.atom_steps_per_s[f"{first.workers}x{first.threads_per_worker}"]
    assert chosen >= 0.95 * best and first.workers * first.threads_per_worker == 2
    cache = json.loads((settings.home / "batch_size_cache.json").read_text())
    assert any(key.startswith("md-workers|") and loaded.sha256 in key for key in cache)
    again = resolve_layout(None, None, **common)
    assert again.source == "cache" and (again.workers, again.threads_per_worker) == (first.workers, first.threads_per_worker)
    assert again.atom_steps_per_s == first.atom_steps_per_s
