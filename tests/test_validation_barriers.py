"""The ``barriers`` validation set: stable entries, the default subset's rule, the figures on records whose answer is
known, the parity plot, and one real hop run end to end with a tiny MACE model."""

from __future__ import annotations

import json
import math

import pytest

from screening.neb import NebFlag, NebParameters
from screening.validation.barriers import (
    DATA_FILE,
    SUBSET_IONS,
    SUBSET_MAX_ATOMS,
    SUBSET_SIZE,
    BarrierSet,
    default_subset,
    input_error,
)
from screening.validation.base import EntryStatus, RunContext, ValidationSet

SMALLEST_LI_HOP = "087-jid87"  # e-VOPO4_Li_1: Li O20 P4 V4, 29 atoms, DFT 0.271 eV
OVERLAPPING_HOP = "374-jid375"  # Na4MnAlP3O12_1: two Na 0.014 Å apart in the published endpoints


@pytest.fixture(scope="module")
def barrier_set():
    return BarrierSet()


@pytest.fixture(scope="module")
def full(barrier_set):
    return barrier_set.entries(full=True)


def by_key(entries, key):
    return next(e for e in entries if e.key == key)


def test_entries_are_every_hop_with_stable_keys(barrier_set, full):
    assert isinstance(barrier_set, ValidationSet) and BarrierSet.name == "barriers"
    assert len(full) == 558 and len({e.key for e in full}) == 558
    assert full[0].key == "000-jid0" and full[0].data["sys_name"] == "Li4P2S7"
    assert full[0].data["reference_barrier_eV"] == 0.3 and full[0].data["ion"] == "Li"
    again = BarrierSet(DATA_FILE).entries(full=True)
    assert [(e.key, dict(e.data), e.elements) for e in again] == [(e.key, dict(e.data), e.elements) for e in full]
    assert all(e.data["ion"] in e.elements for e in full)
    json.dumps([dict(e.data) for e in full])  # the journal stores them
    assert barrier_set.entries(full=True, limit=3) == full[:3]
    assert barrier_set.entries(limit=5) == barrier_set.entries()[:5]
    assert barrier_set.entries(limit=0) == []


def test_default_subset_spreads_over_ions_with_small_cells_first(barrier_set, full):
    subset = barrier_set.entries()
    assert len(subset) == SUBSET_SIZE >= 40 and len({e.key for e in subset}) == len(subset)
    ions = [e.data["ion"] for e in subset]
    assert ions[:len(SUBSET_IONS)] == list(SUBSET_IONS)  # one per ion in turn
    for ion in ("Mg", "Ca", "Zn", "Al"):  # multivalent hosts
        assert ions.count(ion) >= 3
    assert max(ions.count(i) for i in SUBSET_IONS) - min(ions.count(i) for i in SUBSET_IONS if i != "Al") <= 1
    assert all(e.data["n_atoms"] <= SUBSET_MAX_ATOMS for e in subset)
    for ion in SUBSET_IONS:
        mine = [e for e in subset if e.data["ion"] == ion]
        smallest = min(e.data["n_atoms"] for e in full if e.data["ion"] == ion)
        assert mine[0].data["n_atoms"] == smallest
        hosts = [e.data["host"] for e in mine]
        # a host's second hop only after every small host had its first
        firsts = [h for k, h in enumerate(hosts) if h not in hosts[:k]]
        assert hosts[:len(firsts)] == firsts
    assert by_key(full, SMALLEST_LI_HOP) == subset[0]
    # the subset is a function of the input only: the same with the checks' verdicts recomputed
    assert [e.key for e in BarrierSet().entries()] == [e.key for e in subset]


def test_the_rule_skips_hops_whose_endpoints_are_refused(full):
    message = input_error(DATA_FILE, by_key(full, OVERLAPPING_HOP).data["index"])
    assert message.startswith(f"{OVERLAPPING_HOP} initial: atoms 4 (Na) and 7 (Na) are 0.014 Å apart")
    assert input_error(DATA_FILE, by_key(full, SMALLEST_LI_HOP).data["index"]) is None
    every = default_subset(full, size=1000, max_atoms=2000)
    valid = default_subset(full, size=1000, max_atoms=2000,
                           valid=lambda e: e.key != OVERLAPPING_HOP)
    assert OVERLAPPING_HOP in {e.key for e in every} and OVERLAPPING_HOP not in {e.key for e in valid}
    assert len(every) == sum(e.data["ion"] in SUBSET_IONS for e in full) == len(valid) + 1


def record(ion, reference, predicted, status="ok", flags=()):
    return {"key": f"{ion}-{reference}-{predicted}", "ion": ion, "reference_barrier_eV": reference,
            "predicted_barrier_eV": predicted, "status": status, "flags": list(flags), "seconds": 2.0}


def test_summarise_figures_on_records_with_a_known_answer(barrier_set):
    records = [
        record("Mg", 1.0, 0.8),  # -0.2, poor/poor
        record("Li", 0.3, 0.4),  # +0.1, good/good
        record("Li", 0.6, 0.45),  # -0.15, poor/good: misclassified
        record("Mg", 0.7, 0.7, flags=[NebFlag.ENDPOINT_DRIFTED.value]),  # 0.0, flagged but a number
        record("Mg", 0.9, None, flags=[NebFlag.NEB_NOT_CONVERGED.value]),  # no number
        record("Mg", 0.9, None, status=EntryStatus.FAILED.value),
        record("Zn", 0.9, None, status=EntryStatus.UNCOVERED.value),
    ]
    figures = barrier_set.summarise(records)
    assert figures["n"] == 4 and figures["n_entries"] == 7 and figures["n_ok"] == 5
    assert figures["mae_eV"] == pytest.approx(0.45 / 4)
    assert figures["rmse_eV"] == pytest.approx(math.sqrt((0.04 + 0.01 + 0.0225 + 0.0) / 4))
    assert figures["mean_signed_error_eV"] == pytest.approx(-0.25 / 4)
    assert figures["classified_correctly_share"] == pytest.approx(3 / 4)
    assert figures["classification_cutoff_eV"] == 0.5
    assert (figures["n_failed"], figures["n_uncovered"], figures["n_flagged"], figures["n_not_converged"]) == (1, 1, 2, 1)
    assert figures["unflagged"]["n"] == 3 and figures["unflagged"]["mae_eV"] == pytest.approx(0.45 / 3)
    assert figures["seconds_total"] == pytest.approx(14.0)
    assert list(figures["per_ion"]) == ["Li", "Mg", "Zn"]  # the subset's ion order
    li, mg, zn = (figures["per_ion"][i] for i in ("Li", "Mg", "Zn"))
    assert li["n"] == 2 and li["mae_eV"] == pytest.approx(0.125)
    assert li["rmse_eV"] == pytest.approx(math.sqrt((0.01 + 0.0225) / 2))
    assert li["classified_correctly_share"] == 0.5
    assert mg["n"] == 2 and mg["mae_eV"] == pytest.approx(0.1) and mg["mean_signed_error_eV"] == pytest.approx(-0.1)
    assert (mg["n_entries"], mg["n_failed"], mg["n_flagged"], mg["classified_correctly_share"]) == (4, 1, 2, 1.0)
    assert zn["n"] == 0 and zn["mae_eV"] is None and zn["n_entries"] == 1
    json.dumps(figures)
    empty = barrier_set.summarise([])
    assert empty["n"] == 0 and empty["mae_eV"] is None and empty["per_ion"] == {}


def test_plot_writes_a_parity_png(barrier_set, tmp_path):
    records = [record("Li", 0.3, 0.4), record("Mg", 1.0, 0.8), record("Mg", 0.7, 0.7, flags=["endpoint_drifted"]),
               record("Ca", 1.2, None, status="failed")]
    paths = barrier_set.plot(records, tmp_path / "plots", title="test model")
    assert paths == [tmp_path / "plots" / "barriers_parity.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000
    assert barrier_set.plot([], tmp_path / "empty", title="nothing")[0].is_file()


@pytest.fixture(scope="module")
def barrier_model_file(tmp_path_factory):
    """A tiny soft MACE (pair repulsion, weak interactions) for the elements of the smallest Li hop and of the
    overlapping Na hop: Li O P V Na Mn Al."""
    from mlip.testing import build_mace, save_model

    model = build_mace([3, 8, 11, 13, 15, 23, 25], seed=3, pair_repulsion=True, interaction_scale=0.02)
    return save_model(model, tmp_path_factory.mktemp("barrier-model") / "soft-barriers.model")


def context_for(loaded, workdir):
    return RunContext(model_ref=loaded.ref, model_sha256=loaded.sha256, loaded=loaded, calculator=loaded.calculator,
                      device="cpu", workdir=workdir)


def test_run_entry_runs_the_smallest_hop_end_to_end(barrier_model_file, settings, full, tmp_path):
    from mlip.loader import trust

    loaded = trust(str(barrier_model_file), settings)
    # a loose tolerance and small budgets: the point is the path from data to record, not a random model's saddle
    params = NebParameters(n_images=3, fmax_eV_A=5.0, pre_climb_fmax_eV_A=None, max_steps=10, endpoint_fmax_eV_A=5.0,
                           endpoint_max_steps=10, batch_size=3)
    entry = by_key(full, SMALLEST_LI_HOP)
    result = BarrierSet(params=params).run_entry(entry, context_for(loaded, tmp_path / "hop"))

    assert result["status"] == "ok", result
    assert (result["key"], result["ion"], result["sys_name"]) == (SMALLEST_LI_HOP, "Li", "e-VOPO4_Li_1")
    assert result["reference_barrier_eV"] == 0.271 and result["n_atoms"] == 29
    assert result["model_sha256"] == loaded.sha256 and result["seconds"] > 0
    assert set(result["flags"]) <= {f.value for f in NebFlag}
    assert result["converged"] and result["predicted_barrier_eV"] is not None
    document = json.loads((tmp_path / "hop" / "neb_endpoints.json").read_text())
    assert document["moving_index"] == 0 and document["provenance"]["parameters"]["path"] == "as-given"
    assert document["provenance"]["model_sha256"] == loaded.sha256 and len(result["endpoint_steps"]) == 2
    profile = json.loads((tmp_path / "hop" / "band.profile.json").read_text())
    energies = profile["energy_eV"]
    assert len(energies) == 5
    # the highest minus the lowest energy of the band; the larger of forward and backward unless an image lies lower
    assert result["predicted_barrier_eV"] == pytest.approx(max(energies) - min(energies), abs=1e-9)
    if "intermediate_minimum" not in result["flags"]:
        assert result["predicted_barrier_eV"] == pytest.approx(
            max(result["predicted_forward_eV"], result["predicted_backward_eV"]), abs=1e-9)
    lo, hi = result["predicted_interval_eV"]
    assert lo <= result["predicted_barrier_eV"] <= hi
    assert result["hop_length_A"] == pytest.approx(entry.data["hop_length_A"])
    assert result["shown"] == f"{result['predicted_barrier_eV']:.3f} eV (DFT 0.271)"
    json.dumps(result)
    ranking = BarrierSet.ranking([result, {**result, "key": "x", "predicted_barrier_eV": None}])
    assert list(ranking) == [SMALLEST_LI_HOP] and ranking[SMALLEST_LI_HOP].value == result["predicted_barrier_eV"]


def test_fingerprint_follows_the_neb_settings_and_the_data(tmp_path):
    import shutil

    base = BarrierSet().fingerprint()
    assert base == BarrierSet().fingerprint() and len(base) == 64
    assert BarrierSet(params=NebParameters(n_images=5)).fingerprint() != base
    assert BarrierSet(path="minimum-image").fingerprint() != base
    copy = tmp_path / "copy.extxyz.gz"
    shutil.copy(DATA_FILE, copy)
    assert BarrierSet(copy).fingerprint() == base
    assert BarrierSet().describe()["data_sha256"] == BarrierSet(copy).describe()["data_sha256"]


def test_uncovered_and_refused_hops_are_records_not_exceptions(barrier_model_file, settings, full, tmp_path):
    from mlip.loader import trust

    loaded = trust(str(barrier_model_file), settings)  # Li O P V Na Mn Al
    result = BarrierSet().run_entry(by_key(full, "033-jid33"), context_for(loaded, tmp_path / "a"))  # TiS2_Mg
    assert result["status"] == EntryStatus.UNCOVERED.value and result["predicted_barrier_eV"] is None
    assert result["error"].endswith("does not cover Mg, S, Ti") and result["missing_elements"] == ["Mg", "S", "Ti"]
    assert not (tmp_path / "a").exists()

    result = BarrierSet().run_entry(by_key(full, OVERLAPPING_HOP), context_for(loaded, tmp_path / "b"))
    assert result["status"] == EntryStatus.FAILED.value and result["reference_barrier_eV"] == 0.256
    assert "EndpointError" in result["error"] and "overlapping atoms" in result["error"]
