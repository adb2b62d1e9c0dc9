"""Ranking: the documented score on hand-made result summaries — interval-aware, flag penalties, missing values, ties."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from mlip.errors import InputError
from screening.ranking import (
    FLAG_PENALTIES,
    Component,
    RankingWeights,
    rank,
)
from screening.summaries import Measured, NebSummary, Screened, TransportSummary


def transport(key, sigma=None, sigma_ci=None, ea=None, ea_ci=None, flags=(), name=None, kind="electrolyte"):
    """A candidate with a transport summary (σ in mS/cm, Ea in eV)."""
    return Screened(structure_hash=key, name=name or key, kind=kind, transport=TransportSummary(
        conductivity_300K_mS_cm=Measured(value=sigma, ci95=sigma_ci),
        activation_energy_eV=Measured(value=ea, ci95=ea_ci), flags=list(flags)))


def neb_summary(p1=None, p2=None, p3=None, flags=(), p3_ci=None):
    return NebSummary(percolation_1d_eV=Measured(value=p1), percolation_2d_eV=Measured(value=p2),
                      percolation_3d_eV=Measured(value=p3, ci95=p3_ci), flags=list(flags),
                      migration_barrier_eV=min((p for p in (p1, p2, p3) if p is not None), default=None))


def neb(key, p1=None, p2=None, p3=None, flags=(), kind="cathode_host", p3_ci=None):
    return Screened(structure_hash=key, name=key, kind=kind, neb=neb_summary(p1, p2, p3, flags, p3_ci))


def order(ranked):
    return [r.structure_hash for r in ranked]


def test_known_order_and_score_terms():
    rows = [
        transport("c", sigma=0.01, sigma_ci=(0.005, 0.02), ea=0.45, ea_ci=(0.40, 0.50)),
        transport("a", sigma=10.0, sigma_ci=(5.0, 20.0), ea=0.22, ea_ci=(0.20, 0.24)),
        transport("b", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.30, ea_ci=(0.28, 0.32)),
    ]
    ranked = rank(rows)
    assert order(ranked) == ["a", "b", "c"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    a = ranked[0]
    # z_σ = log10(σ_lo / 1 mS/cm); z_Ea = (0.3 − Ea_hi) / 0.1; score = Σ contributions − flag penalties.
    assert a.components["conductivity"].standardised == pytest.approx(math.log10(5.0))
    assert a.components["activation_energy"].standardised == pytest.approx((0.3 - 0.24) / 0.1)
    assert a.score == pytest.approx(sum(a.contributions.values()))
    assert set(a.components) == {"conductivity", "activation_energy"}  # no NEB anywhere: no barrier component
    assert a.missing == [] and a.flags == []
    row = a.table_row()
    assert row["rank"] == 1 and row["conductivity_300K_ci95_lo_mS_cm"] == 5.0 and "contribution_flags" in row


def test_interval_aware_conductivity_and_activation_energy():
    # Higher point σ but a much wider interval whose lower bound is lower → ranks below the tight one.
    wide = transport("wide", sigma=10.0, sigma_ci=(0.1, 1000.0), ea=0.3, ea_ci=(0.28, 0.32))
    tight = transport("tight", sigma=5.0, sigma_ci=(3.0, 8.0), ea=0.3, ea_ci=(0.28, 0.32))
    assert order(rank([wide, tight])) == ["tight", "wide"]
    # Same for Ea: lower point value, but the upper bound is higher.
    wide = transport("wide", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.20, ea_ci=(0.05, 0.45))
    tight = transport("tight", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.25, ea_ci=(0.23, 0.27))
    assert order(rank([wide, tight])) == ["tight", "wide"]
    # A lower bound at or below zero counts as the floor, not as an error.
    zero = transport("zero", sigma=0.001, sigma_ci=(0.0, 0.01), ea=0.5, ea_ci=(0.4, 0.6))
    ranked = rank([zero, tight])
    assert order(ranked) == ["tight", "zero"] and ranked[1].components["conductivity"].standardised == -10.0


def test_flags_penalise_by_their_documented_amount():
    clean = transport("x1", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32))
    flagged = transport("x0", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32), flags=["unstable_md"])
    ranked = rank([flagged, clean])
    assert order(ranked) == ["x1", "x0"]
    assert ranked[0].score - ranked[1].score == pytest.approx(FLAG_PENALTIES["unstable_md"])
    assert ranked[1].flag_penalties == {"unstable_md": FLAG_PENALTIES["unstable_md"]}
    # A flagged candidate with a slightly better number still ranks below a clean one.
    better = transport("x0", sigma=3.0, sigma_ci=(1.5, 6.0), ea=0.3, ea_ci=(0.28, 0.32), flags=["framework_melted"])
    assert order(rank([better, clean])) == ["x1", "x0"]
    # The weight scales every penalty; with 0, flags are ignored and the tie goes to the hash order.
    half = rank([flagged, clean], RankingWeights(flag_penalty=0.5))
    assert half[0].score - half[1].score == pytest.approx(0.5 * FLAG_PENALTIES["unstable_md"])
    off = rank([flagged, clean], RankingWeights(flag_penalty=0.0))
    assert order(off) == ["x0", "x1"] and off[0].score == off[1].score
    # Unknown flags cost something and are noted.
    odd = rank([transport("y", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32), flags=["weird"]), clean])
    assert order(odd) == ["x1", "y"] and any("weird" in n for n in odd[1].notes)


def test_every_known_flag_has_a_documented_penalty():
    from screening.neb.results import NebFlag, PercolationFlag
    from screening.transport.results import Flag

    known = {f.value for enum in (Flag, NebFlag, PercolationFlag) for f in enum}
    assert known <= set(FLAG_PENALTIES)
    for flag in ("unstable_md", "framework_melted", "not_diffusive", "neb_not_converged"):
        assert FLAG_PENALTIES[flag] >= 1.0  # these mean the number is not certain: at least one unit


def test_missing_values_rank_last_in_that_component_and_are_marked():
    rows = [
        transport("a", sigma=0.01, sigma_ci=(0.005, 0.02), ea=0.40, ea_ci=(0.38, 0.42)),
        transport("b", sigma=0.1, sigma_ci=(0.05, 0.2), ea=0.35, ea_ci=(0.33, 0.37)),
        # The best Ea, but σ only as a point value (no interval): not ranked as if certain.
        transport("m", sigma=100.0, ea=0.10, ea_ci=(0.09, 0.11)),
    ]
    ranked = {r.structure_hash: r for r in rank(rows, RankingWeights(missing_margin=1.0))}
    m = ranked["m"]
    assert m.missing == ["conductivity"] and m.components["conductivity"].imputed
    assert any("no 95% interval" in n for n in m.notes)
    worst = min(ranked[k].components["conductivity"].standardised for k in ("a", "b"))
    assert m.components["conductivity"].standardised == pytest.approx(worst - 1.0)
    assert all(m.components["conductivity"].standardised < ranked[k].components["conductivity"].standardised
               for k in ("a", "b"))
    # With conductivity alone, the row without it is last.
    only_sigma = rank(rows, RankingWeights(activation_energy=0.0, migration_barrier=0.0))
    assert order(only_sigma)[-1] == "m"


def test_components_named_by_the_caller_apply_even_when_nobody_has_them():
    rows = [transport("a", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32)),
            transport("b", sigma=2.0, sigma_ci=(1.0, 4.0), ea=0.3, ea_ci=(0.28, 0.32))]
    ranked = rank(rows, components=[Component.CONDUCTIVITY, Component.ACTIVATION_ENERGY, Component.MIGRATION_BARRIER])
    assert order(ranked) == ["b", "a"]
    assert all(r.missing == ["migration_barrier"] and r.components["migration_barrier"].contribution == 0
               for r in ranked)


def test_ties_are_deterministic_and_noted():
    rows = [transport(h, sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32)) for h in ("d4", "a1", "c3", "b2")]
    rows.append(transport("z9", sigma=100.0, sigma_ci=(50.0, 200.0), ea=0.2, ea_ci=(0.18, 0.22)))
    expected = ["z9", "a1", "b2", "c3", "d4"]
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(rows)
        ranked = rank(rows)
        assert order(ranked) == expected
    assert any("tied on score" in n for n in ranked[1].notes)
    assert not any("tied" in n for n in ranked[0].notes)


def test_weights_change_the_order_as_expected():
    fast_but_steep = transport("p", sigma=50.0, sigma_ci=(20.0, 100.0), ea=0.45, ea_ci=(0.40, 0.50))
    slow_but_flat = transport("q", sigma=0.5, sigma_ci=(0.2, 1.0), ea=0.20, ea_ci=(0.18, 0.22))
    assert order(rank([fast_but_steep, slow_but_flat], RankingWeights(conductivity=1, activation_energy=0))) == ["p", "q"]
    assert order(rank([fast_but_steep, slow_but_flat], RankingWeights(conductivity=0, activation_energy=1))) == ["q", "p"]


def test_percolation_barrier_dimensionality_and_bounds():
    one_d = neb("one", p1=0.20)  # effective 0.20 + 0.30 = 0.50
    three_d = neb("three", p1=0.40, p2=0.42, p3=0.45)  # effective 0.45
    ranked = rank([one_d, three_d])
    assert order(ranked) == ["three", "one"]
    assert ranked[1].components["migration_barrier"].raw == pytest.approx(0.50)
    assert "1D" in ranked[1].components["migration_barrier"].detail
    # Smaller dimensional penalties let the 1D channel win.
    assert order(rank([one_d, three_d], RankingWeights(penalty_2d_eV=0.0, penalty_1d_eV=0.1))) == ["one", "three"]
    # The upper end of the NEB interval is used when present.
    uncertain = neb("unc", p3=0.40, p3_ci=(0.40, 0.60))
    assert order(rank([uncertain, three_d])) == ["three", "unc"]
    # A single hop that does not percolate is not a long-range path: missing, marked, after the others.
    isolated = Screened(structure_hash="iso", kind="cathode_host", neb=NebSummary(migration_barrier_eV=0.05))
    ranked = rank([isolated, one_d, three_d])
    assert order(ranked)[-1] == "iso" and ranked[-1].missing == ["migration_barrier"]


def test_transport_and_neb_summaries_of_a_candidate_rank_together():
    both = [
        transport("h1", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32), kind="cathode_host").model_copy(
            update={"neb": neb_summary(p3=0.4, flags=["neb_not_converged"])}),
        transport("h2", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32), kind="cathode_host",
                  flags=["few_hops"]).model_copy(update={"neb": neb_summary(p3=0.4)}),
    ]
    ranked = {r.structure_hash: r for r in rank(both)}
    assert set(ranked["h1"].components) == {"conductivity", "activation_energy", "migration_barrier"}
    assert ranked["h1"].flags == ["neb_not_converged"] and ranked["h2"].flags == ["few_hops"]
    assert ranked["h2"].rank == 1  # few_hops (0.5) costs less than neb_not_converged (1.0)
    with pytest.raises(InputError, match="given twice"):
        rank(both + [transport("h1", sigma=2.0, sigma_ci=(1.0, 3.0))])
    assert rank([]) == []


def test_result_rows_become_one_screened_candidate_each():
    """The database side: a candidate's transport and NEB rows (columns derived from the summaries) merge into one
    Screened; two rows of one stage for a candidate are refused; summaries survive the columns both ways."""
    from workflows.db.results import screened

    t = transport("h1", sigma=1.0, sigma_ci=(0.5, 2.0), ea=0.3, ea_ci=(0.28, 0.32), flags=["few_hops"]).transport
    n = neb_summary(p1=0.2, p3=0.4, p3_ci=(0.38, 0.45), flags=["neb_not_converged"])
    rows = [{"structure_hash": "h1", "stage": "transport", "name": "a", **t.columns()},
            {"structure_hash": "h1", "stage": "neb", "kind": "cathode_host", **n.columns()}]
    (one,) = screened(rows)
    assert one.transport == t and one.neb == n and one.name == "a" and one.kind == "cathode_host"
    assert one.flags == ["few_hops", "neb_not_converged"]
    assert rows[1]["percolation_3d_ci95_hi_eV"] == 0.45 and rows[0]["conductivity_300K_ci95_lo_mS_cm"] == 0.5
    with pytest.raises(InputError, match="two transport rows"):
        screened(rows + [{"structure_hash": "h1", "stage": "transport", **t.columns()}])
    with pytest.raises(InputError, match="structure_hash"):
        screened([{"stage": "transport"}])


def test_weights_validation():
    with pytest.raises(ValidationError):
        RankingWeights(conductivity=0, activation_energy=0, migration_barrier=0)
    with pytest.raises(ValidationError):
        RankingWeights(penalty_2d_eV=0.3, penalty_1d_eV=0.1)
    with pytest.raises(ValidationError):
        RankingWeights(conductivty=1.0)
    with pytest.raises(ValidationError):
        RankingWeights(conductivity=-1.0)
