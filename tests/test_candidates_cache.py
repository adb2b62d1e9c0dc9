"""Ordered library cells are cached on disk (keyed by entry data, seed, parameters and code) and `list` never orders."""

from __future__ import annotations

import warnings

import pytest

from screening.candidates import builder, cache
from screening.candidates.identity import structure_hash
from screening.candidates.library import entry_names, get_entry

warnings.filterwarnings("ignore", message=".*fractional coordinates.*")

# The undecorated builder: bypasses the in-process lru_cache that the other candidate tests share.
order_entry = builder._ordered_entry.__wrapped__
SMALL = "Li3InCl6"  # partially occupied, orders in well under a second


def _refuse(*args, **kwargs):
    raise AssertionError("order_structure was called although the cell should have come from the cache")


def test_ordered_cell_is_written_under_home_and_read_back_without_ordering(settings, monkeypatch):
    entry = get_entry(SMALL)
    key = cache.cache_key(entry, 0, builder.LIBRARY_ORDERING_PARAMS)
    assert not cache.cache_path(key).exists()
    fresh, record, sites = order_entry(SMALL, 0)
    path = cache.cache_path(key)
    assert path.exists() and path.is_relative_to(settings.home)

    monkeypatch.setattr(builder, "order_structure", _refuse)
    cached, cached_record, cached_sites = order_entry(SMALL, 0)
    assert structure_hash(cached) == structure_hash(fresh)
    assert [str(s.specie) for s in cached] == [str(s.specie) for s in fresh]
    assert [s.properties.get("label") for s in cached] == [s.properties.get("label") for s in fresh]
    assert cached_record.model_dump() == record.model_dump()
    assert cached_sites == sites


def test_key_changes_with_entry_data_seed_and_parameters():
    entry = get_entry(SMALL)
    params = dict(builder.LIBRARY_ORDERING_PARAMS)
    base = cache.cache_key(entry, 0, params)
    assert cache.cache_key(get_entry(SMALL), 0, dict(params)) == base
    edited = entry.model_copy(update={"lattice": entry.lattice.model_copy(update={"a": entry.lattice.a + 0.01})})
    assert cache.cache_key(edited, 0, params) != base
    assert cache.cache_key(entry, 1, params) != base
    assert cache.cache_key(entry, 0, {**params, "sweeps": params["sweeps"] + 1}) != base


def test_unreadable_cache_file_is_ignored_and_replaced(monkeypatch):
    entry = get_entry(SMALL)
    path = cache.cache_path(cache.cache_key(entry, 0, builder.LIBRARY_ORDERING_PARAMS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    structure, _, _ = order_entry(SMALL, 0)
    assert structure.is_ordered
    assert cache.load(cache.cache_key(entry, 0, builder.LIBRARY_ORDERING_PARAMS)) is not None


def test_unwritable_home_still_builds(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the home should be")
    monkeypatch.setenv("IONSCREEN_HOME", str(blocker))
    structure, _, _ = order_entry(SMALL, 0)
    assert structure.is_ordered


@pytest.mark.parametrize("name", entry_names(buildable_only=True))
def test_listed_atom_count_is_the_ordered_cell_size(name):
    assert builder.ordered_atom_count(name) == len(builder._ordered_entry(name, 0)[0])


def test_atom_count_is_remembered_so_a_second_list_builds_nothing(monkeypatch):
    first = builder.ordered_atom_count("LATP")

    def _no_build(entry):
        raise AssertionError("the parent was built although its atom count is cached")

    monkeypatch.setattr(builder, "_ordering_cell", _no_build)
    assert builder.ordered_atom_count("LATP") == first == 110


def test_cli_list_never_orders(monkeypatch, unbuildable_library_entry):
    from typer.testing import CliRunner

    from workflows.cli.candidates import app

    monkeypatch.setattr(builder, "order_structure", _refuse)
    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["LATP"]["atoms"] == "110" and rows[unbuildable_library_entry]["atoms"] == "-"
    assert rows["Li7P3S11"]["atoms"] == "42"
    assert rows["beta-Li3PS4"]["flags"] == "noised_coordinates"
