"""A second model in a screening job (``agreement_model``): the spec refuses a bad one by its key, the plan pins it and
runs every stage with it too, each candidate gets its model disagreement (bounds stay bounds), and the ranking
penalises disagreement only when asked to."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import yaml

from screening.ranking import AgreementBasis, RankingWeights, model_agreement, rank
from screening.summaries import Measured, NebSummary, Screened, TransportSummary


# ---------------------------------------------------------------------------------------------- the job file
def _job_text(**extra) -> str:
    job = {"name": "agree", "model": "bundled:lipscl-demo", "candidates": [{"library": "Li2S"}],
           "transport": "quick", **extra}
    return yaml.safe_dump(job, sort_keys=False)


def _only_problem(text: str, tmp_path):
    from workflows.jobs.spec import JobSpecError, parse_job_spec

    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, source="job.yaml", base_dir=tmp_path)
    (problem,) = info.value.problems
    return problem


def test_the_spec_validates_the_second_model_like_the_first_and_names_its_key(tmp_path):
    from workflows.jobs.spec import parse_job_spec

    text = _job_text(agreement_model="no-such-dir/other.model")
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if text_line.startswith("agreement_model:"))
    problem = _only_problem(text, tmp_path)
    assert problem.path == "agreement_model" and problem.line == line and "does not exist" in problem.message
    assert f"job.yaml:{line}: agreement_model:" in problem.render("job.yaml")

    problem = _only_problem(_job_text(agreement_model="models:/no-alias"), tmp_path)  # malformed registry ref
    assert problem.path == "agreement_model" and "models:/" in problem.message

    problem = _only_problem(_job_text(agreement_model="bundled:no-such-model"), tmp_path)
    assert problem.path == "agreement_model"

    problem = _only_problem(_job_text(agreement_model="bundled:lipscl-demo"), tmp_path)
    assert problem.path == "agreement_model" and "same reference as model" in problem.message

    problem = _only_problem(_job_text(agreement_mdoel="x.model"), tmp_path)
    assert problem.path == "agreement_mdoel" and "did you mean 'agreement_model'" in problem.message

    (tmp_path / "other.model").write_bytes(b"checked when planned, not here")
    spec = parse_job_spec(_job_text(agreement_model="other.model", ranking={"disagreement": 2.0}),
                          source="job.yaml", base_dir=tmp_path)
    assert spec.agreement_model == str(tmp_path / "other.model") and spec.ranking.disagreement == 2.0
    assert parse_job_spec(_job_text(), base_dir=tmp_path).agreement_model is None
    assert RankingWeights().disagreement == 0.0  # report only, unless asked


def test_ranking_weight_disagreement_is_bounded_like_the_others(tmp_path):
    from screening.ranking import MAX_RANKING_WEIGHT

    for bad in (-1.0, MAX_RANKING_WEIGHT * 2, math.inf):
        problem = _only_problem(_job_text(ranking={"disagreement": bad}), tmp_path)
        assert problem.path == "ranking.disagreement"


def test_api_submissions_name_the_second_model_file_inside_submissions_only():
    from workflows.web.submit import check_file_references

    (problem,) = check_file_references({"model": "bundled:lipscl-demo", "agreement_model": "/etc/evil.model"})
    assert problem["loc"][-1] == "agreement_model" and "relative" in problem["msg"]
    assert check_file_references({"model": "bundled:lipscl-demo", "agreement_model": "chgnet:0.3.0"}) == []


# ---------------------------------------------------------------------------------------------- the figures
def sigma(key, value=None, ci=None, flags=()) -> Screened:
    """A candidate with σ(300 K) (mS/cm) and a fixed Ea, so that only σ and the disagreement move the score."""
    return Screened(structure_hash=key, name=key, transport=TransportSummary(
        conductivity_300K_mS_cm=Measured(value=value, ci95=ci),
        activation_energy_eV=Measured(value=0.3, ci95=(0.28, 0.32)), flags=list(flags)))


def barrier(key, p3=None, p1=None, flags=()) -> Screened:
    return Screened(structure_hash=key, name=key, neb=NebSummary(
        percolation_1d_eV=Measured(value=p1), percolation_3d_eV=Measured(value=p3, ci95=None if p3 is None else
                                                                          (p3 - 0.01, p3 + 0.01)),
        flags=list(flags)))


def test_sigma_disagreement_in_decades_and_bounds_stay_bounds():
    both = model_agreement(sigma("a", 10.0, (5.0, 20.0)), sigma("a", 0.1, (0.05, 0.2)))
    assert both.model_disagreement_log10_sigma == pytest.approx(2.0)
    assert both.model_disagreement_log10_sigma_basis is AgreementBasis.ESTIMATES
    assert both.model_disagreement_barrier_basis is None  # neither model ran NEB: not applicable, not "missing"
    assert both.units() == pytest.approx(2.0) and both.figures_text() == "2.00/—"

    # the second model gives only an upper bound (no diffusive signal), below the first's estimate: at least 3 decades
    below = model_agreement(sigma("a", 10.0, (5.0, 20.0)), sigma("a", None, (0.0, 0.01), ["upper_bound"]))
    assert below.model_disagreement_log10_sigma == pytest.approx(3.0)
    assert below.model_disagreement_log10_sigma_basis is AgreementBasis.AT_LEAST
    assert below.figures_text().startswith("≥3.00") and "at least 3 decades" in below.notes[0]
    assert below.agreement_model_flags == ["upper_bound"]

    # a bound above the other's estimate does not contradict it: no number is invented
    consistent = model_agreement(sigma("a", None, (0.0, 5.0)), sigma("a", 0.1, (0.05, 0.2)))
    assert consistent.model_disagreement_log10_sigma is None
    assert consistent.model_disagreement_log10_sigma_basis is AgreementBasis.CONSISTENT_BOUND
    assert consistent.figures_text() == "bound/—" and "consistent" in consistent.notes[0]

    bounds = model_agreement(sigma("a", None, (0.0, 5.0)), sigma("a", None, (0.0, 0.001)))
    assert bounds.model_disagreement_log10_sigma is None
    assert bounds.model_disagreement_log10_sigma_basis is AgreementBasis.BOUNDS_ONLY

    missing = model_agreement(sigma("a", 1.0, (0.5, 2.0)), None)  # the second model's task failed
    assert missing.model_disagreement_log10_sigma is None
    assert missing.model_disagreement_log10_sigma_basis is AgreementBasis.MISSING
    assert "agreement model: no result" in missing.notes[0]


def test_barrier_disagreement_uses_the_effective_percolating_barrier_and_neb_bounds():
    same_dim = model_agreement(barrier("a", p3=0.30), barrier("a", p3=0.45))
    assert same_dim.model_disagreement_barrier_eV == pytest.approx(0.15)
    assert same_dim.model_disagreement_barrier_basis is AgreementBasis.ESTIMATES
    assert same_dim.units() == pytest.approx(1.5)  # 0.1 eV = one unit

    # model 2 percolates only in 1D (0.25 eV + the 0.30 eV 1D penalty = 0.55 eV): 0.25 eV apart from 3D at 0.30 eV
    other_dim = model_agreement(barrier("a", p3=0.30), barrier("a", p1=0.25))
    assert other_dim.model_disagreement_barrier_eV == pytest.approx(0.25)

    # hops left out (not_computed): model 2's threshold is an upper bound
    below = model_agreement(barrier("a", p3=0.60), barrier("a", p3=0.40, flags=["not_computed"]))
    assert below.model_disagreement_barrier_basis is AgreementBasis.AT_LEAST
    assert below.model_disagreement_barrier_eV == pytest.approx(0.20)
    above = model_agreement(barrier("a", p3=0.30), barrier("a", p3=0.40, flags=["incomplete_hops"]))
    assert above.model_disagreement_barrier_eV is None
    assert above.model_disagreement_barrier_basis is AgreementBasis.CONSISTENT_BOUND


def test_the_ranking_penalises_disagreement_only_when_weighted():
    # "shaky" is better by its primary model (σ lower bound 2 vs 1 mS/cm) but the second model puts it 2 decades lower;
    # "steady" has both models within 0.1 decade.
    shaky, steady = sigma("shaky", 4.0, (2.0, 8.0)), sigma("steady", 2.0, (1.0, 4.0))
    second = {"shaky": sigma("shaky", 0.04, (0.02, 0.08)), "steady": sigma("steady", 2.5, (1.2, 5.0))}

    plain = rank([shaky, steady])
    reported = rank([shaky, steady], second=second)
    assert [r.structure_hash for r in reported] == ["shaky", "steady"] == [r.structure_hash for r in plain]
    assert [r.score for r in reported] == [r.score for r in plain]  # weight 0: reported, not ranked
    by_key = {r.structure_hash: r for r in reported}
    assert by_key["shaky"].agreement.model_disagreement_log10_sigma == pytest.approx(2.0)
    assert by_key["steady"].agreement.model_disagreement_log10_sigma == pytest.approx(math.log10(1.25))
    assert by_key["shaky"].contributions["model_disagreement"] == 0.0
    assert "model_disagreement" not in plain[0].contributions and plain[0].agreement is None

    weights = RankingWeights(disagreement=1.0)
    penalised = rank([shaky, steady], weights, second=second)
    assert [r.structure_hash for r in penalised] == ["steady", "shaky"]
    top, low = penalised
    assert low.disagreement_penalty == pytest.approx(2.0)
    assert low.score == pytest.approx(by_key["shaky"].score - 2.0)
    assert low.score == pytest.approx(sum(low.contributions.values()))
    row = low.table_row()
    assert row["model_disagreement_log10_sigma"] == pytest.approx(2.0)
    assert row["model_disagreement_log10_sigma_basis"] == "estimates" and row["contribution_model_disagreement"] == -2.0

    # a candidate without a second-model result is not penalised, and says so
    alone = rank([shaky, steady], weights, second={"steady": second["steady"]})
    shaky_alone = next(r for r in alone if r.structure_hash == "shaky")
    assert shaky_alone.disagreement_penalty == 0.0
    assert any("not penalised" in n and "missing" in n for n in shaky_alone.notes)
    # an at-least figure counts as itself
    bound = rank([shaky], weights, second={"shaky": sigma("shaky", None, (0.0, 0.004), ["upper_bound"])})
    assert bound[0].disagreement_penalty == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------- planning (no Ray)
def _write_job(directory, models, candidates, **extra):
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "agreement-test", "model": models[0], "agreement_model": models[1], "working_ion": "Li",
        "candidates": candidates,
        "transport": {"overrides": {"temperatures_K": [600], "timestep_fs": 2.0, "equilibration_ps": 0.05,
                                    "production_ps": 0.3, "sample_interval_fs": 10.0, "checkpoint_interval_ps": 0.1,
                                    "supercell_min_length_A": 5.0, "relax": False,
                                    "analysis": {"n_blocks": 4, "fit_min_start_fs": 50.0, "min_hops": 1}}},
        "resources": {"workers": 1, "threads_per_worker": 1}, **extra}, sort_keys=False))
    return path


@pytest.fixture
def two_models(tmp_path, tiny_model_file, soft_model_file, settings):
    from mlip.loader import trust

    paths = []
    for source, name in ((soft_model_file, "soft.model"), (tiny_model_file, "tiny.model")):
        path = tmp_path / name
        path.write_bytes(source.read_bytes())
        trust(str(path), settings)
        paths.append(path)
    return paths


def test_the_plan_pins_both_models_and_plans_every_stage_with_each(tmp_path, settings, two_models):
    from mlip.loader import trust
    from mlip.testing import build_mace, save_model
    from workflows.db import Store
    from workflows.jobs.plan import load_plan, plan_job, task_key, task_specs
    from workflows.jobs.spec import load_job_spec

    store = Store.open(settings.db_url)
    soft, tiny = two_models
    planned = plan_job(load_job_spec(_write_job(tmp_path, ["soft.model", "tiny.model"], [{"library": "Li2S"}])),
                       settings, store=store)
    plan = load_plan(store, planned.job_id, settings)
    assert plan.agreement_model is not None and plan.agreement_model.ref == str(tiny)
    assert plan.model.sha256 != plan.agreement_model.sha256 and planned.n_tasks == 2
    specs = task_specs(store, planned.job_id, plan, store.tasks.list(planned.job_id))
    assert [s.model for s in specs.values()] == [plan.model, plan.agreement_model]  # the primary model's first
    for s in specs.values():  # the key names the model: same candidate, stage and protocol, another key
        assert s.task_key == task_key(s.candidate.structure_hash, s.stage, plan.protocol_hash(s.stage), s.model.sha256)

    # a candidate the second model does not cover fails (naming that model); the others are screened by both
    li_s = save_model(build_mace([3, 16], seed=3), tmp_path / "lis.model")
    trust(str(li_s), settings)
    partly = plan_job(load_job_spec(_write_job(tmp_path, ["soft.model", "lis.model"],
                                               [{"library": "Li2S"}, {"library": "Li6PS5Cl"}])), settings, store=store)
    assert partly.n_candidates == 1 and partly.n_tasks == 2
    (failure,) = partly.failures
    assert "Li6PS5Cl contains Cl, P, which the agreement model does not cover" in failure

    # the same bytes under another name are the same model
    (tmp_path / "copy.model").write_bytes(soft.read_bytes())
    trust(str(tmp_path / "copy.model"), settings)
    from mlip.errors import InputError

    with pytest.raises(InputError, match="same model"):
        plan_job(load_job_spec(_write_job(tmp_path, ["soft.model", "copy.model"], [{"library": "Li2S"}])), settings,
                 store=store)


# ---------------------------------------------------------------------------------------------- one real job
@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def test_a_job_with_two_models_shows_their_disagreement(tmp_path, settings, two_models, ray_session):
    """Li2S with the soft model, compared with the tiny one: both models' results are stored with their own
    provenance, and `ionscreen results` (table and JSON), the REST API and the web table show the disagreement."""
    from typer.testing import CliRunner

    from workflows.cli import app
    from workflows.db import Store
    from workflows.jobs.plan import plan_job
    from workflows.jobs.run import run_job
    from workflows.jobs.spec import load_job_spec

    store = Store.open(settings.db_url)
    planned = plan_job(load_job_spec(_write_job(tmp_path, ["soft.model", "tiny.model"], [{"library": "Li2S"}])),
                       settings, store=store)
    summary = run_job(planned.job_id, settings, live=False)
    assert summary.done == 2 and summary.failed == 0, summary.errors
    rows = store.results.for_job(planned.job_id)
    assert {r["model_sha256"] for r in rows} == {planned.plan.model.sha256, planned.plan.agreement_model.sha256}
    assert {r["model_ref"] for r in rows} == {str(p) for p in two_models}

    table = CliRunner().invoke(app, ["results", planned.job_id[:8]])
    assert table.exit_code == 0, table.output
    assert f"agreement model {two_models[1]}" in table.output and "Δmodels log10σ/eV" in table.output
    document = json.loads(CliRunner().invoke(app, ["results", planned.job_id, "--format", "json"]).output)
    (row,) = document["ranked"]
    assert document["agreement_model"]["sha256"] == planned.plan.agreement_model.sha256
    agreement = row["agreement"]
    assert agreement["model_disagreement_log10_sigma_basis"] in {b.value for b in AgreementBasis}
    assert agreement["model_disagreement_barrier_basis"] is None  # no NEB in this job
    if agreement["model_disagreement_log10_sigma"] is not None:
        assert agreement["model_disagreement_log10_sigma"] >= 0
    csv_text = CliRunner().invoke(app, ["results", planned.job_id, "--format", "csv"]).output
    assert "model_disagreement_log10_sigma" in csv_text.splitlines()[0]

    from fastapi.testclient import TestClient

    from webfuzz import NoLaunch
    from workflows.web import create_app

    with TestClient(create_app(settings, launcher=NoLaunch(), refresh_interval_s=0)) as client:
        api = client.get(f"/api/jobs/{planned.job_id}/results").json()
        assert api["ranked"][0]["agreement"] == agreement
        page = client.get(f"/?job={planned.job_id}", headers={"accept": "text/html"}).text
        assert "Δ models log10σ/eV" in page and 'class="num agreement"' in page
        assert "Δ models" not in client.get("/", headers={"accept": "text/html"}).text  # no job: no pair of models
    print(textwrap.indent(table.output, "  "))
