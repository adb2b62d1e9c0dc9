"""The model card of a trained potential: what it was trained on, how, how well it does, and where not to use it.

:class:`ModelCard` is the data (stored as JSON beside the model and in MLflow); :func:`render_markdown`
turns it into the ``model_card.md`` a person reads.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


from training.evaluate import ErrorSet, Estimate, EvaluationReport


class DatasetSummary(BaseModel):
    path: str
    dataset_hash: str
    n_frames: int
    n_atoms: int
    split_counts: dict[str, int]
    element_atom_counts: dict[str, int]
    config_type_counts: dict[str, int]
    split_group_by: str | None = Field(None, description="The info key whose value keeps frames in one split "
                                       "(e.g. host); None: split by each frame's structure hash.")
    sources: list[str] = Field(default_factory=list, description="Source files as imported (name, format, frames).")


class ValidationFigures(BaseModel):
    """One validation set's figures for a model (``ionscreen validate``), as text with their intervals."""

    set: str = Field(description="Validation set: conductivity, barriers or frames.")
    fingerprint: str = Field(description="SHA-256 of the set's protocol and data (same fingerprint, same computation).")
    figures: dict[str, str] = Field(description="Figure name (unit in the name) → value with its 95% interval.")
    mlflow_run_id: str | None = None
    created_utc: str


class ModelCard(BaseModel):
    name: str
    created_utc: str
    model_file: str
    model_sha256: str
    elements: list[str]
    n_params: int
    dtype: str
    r_max_A: float
    heads: list[str]
    mode: str = Field(description="scratch, naive (fine-tuning) or multihead (replay fine-tuning).")
    foundation_ref: str | None = None
    foundation_sha256: str | None = None
    replay_file: str | None = None
    architecture: dict[str, str]
    hyperparameters: dict[str, str] = Field(description="Every mace-torch training flag used.")
    e0s_eV: dict[str, float] = Field(description="Isolated-atom (reference) energies per element, eV.")
    e0s_method: str
    dataset: DatasetSummary
    epochs_run: int
    best_valid: dict[str, float] = Field(default_factory=dict, description="Lowest validation errors seen during training.")
    test: EvaluationReport | None = None
    flags: list[str] = Field(default_factory=list)
    mlflow_run_id: str | None = None
    mlflow_tracking_uri: str | None = None  # password masked
    registered_as: str | None = None
    mace_version: str
    ionscreen_version: str
    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    validation: list[ValidationFigures] = Field(
        default_factory=list, description="Figures of `ionscreen validate` (against experiment and DFT), one per set.")


def _est(e: Estimate | None, digits: int = 1) -> str:
    if e is None:
        return "–"
    if e.ci95_low is None:
        return f"{e.value:.{digits}f}"
    return f"{e.value:.{digits}f} [{e.ci95_low:.{digits}f}, {e.ci95_high:.{digits}f}]"


def _error_row(label: str, es: ErrorSet) -> str:
    return (f"| {label} | {es.n_frames} | {es.n_atoms} | {_est(es.energy_mae_meV_atom, 2)} | "
            f"{_est(es.energy_rmse_meV_atom, 2)} | {_est(es.force_mae_meV_A)} | {_est(es.force_rmse_meV_A)} | "
            f"{_est(es.stress_mae_meV_A3, 2)} |")


def default_limitations(card: ModelCard) -> list[str]:
    """Limits that follow from the data and the training, stated for every card."""
    out = [
        f"Covers only {', '.join(card.elements)}; ionscreen refuses structures with other elements.",
        "Trained on the configurations listed above; structures far from them (other phases, surfaces, "
        "molecules, very high temperature or pressure) are extrapolation and may be wrong without warning.",
        "Reproduces the reference labels of its dataset (one DFT method and its settings), not experiment: "
        "the method's own errors come on top of the errors below.",
        f"Short-range: no interaction beyond {card.r_max_A:g} Å per message-passing layer, no long-range "
        "electrostatics or dispersion beyond what the data contain.",
    ]
    if card.test is None or card.test.n_frames < 10:
        out.append("Fewer than 10 test frames: the quoted test errors are rough (see the intervals).")
    if "e0s_underdetermined" in card.flags:
        out.append("The training compositions do not determine the per-element reference energies uniquely: "
                   "energies of other compositions are less reliable than the test errors suggest.")
    if card.mode == "naive":
        out.append("Naively fine-tuned: accuracy of the foundation model outside this dataset is not retained.")
    return out


def render_validation_section(items: list[ValidationFigures]) -> list[str]:
    """The card's "Validation" section (Markdown lines): per set, its figures with intervals and the MLflow run."""
    lines = ["## Validation", ""]
    if not items:
        return lines + ["Not validated yet: run `ionscreen validate MODEL --set conductivity` (and barriers, frames).", ""]
    for item in items:
        run = f", MLflow run `{item.mlflow_run_id}`" if item.mlflow_run_id else ""
        lines += [f"### {item.set}", "", f"Set fingerprint `{item.fingerprint[:12]}`, {item.created_utc}{run}.", "",
                  "| figure | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in item.figures.items()]
        lines.append("")
    return lines


def render_markdown(card: ModelCard) -> str:
    ds = card.dataset
    lines = [
        f"# Model card: {card.name}",
        "",
        f"MACE interatomic potential trained by ionscreen ({card.ionscreen_version}) with mace-torch "
        f"{card.mace_version} on {card.created_utc}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| file | `{card.model_file}` |",
        f"| SHA-256 | `{card.model_sha256}` |",
        f"| elements | {' '.join(card.elements)} |",
        f"| parameters | {card.n_params} |",
        f"| dtype | {card.dtype} |",
        f"| cutoff r_max | {card.r_max_A:g} Å |",
        f"| heads | {', '.join(card.heads)} (ionscreen uses 'Default') |",
        f"| training | {card.mode}" + (f" from `{card.foundation_ref}` (sha256 {card.foundation_sha256[:12]})"
                                       if card.foundation_ref and card.foundation_sha256 else "") + " |",
    ]
    if card.replay_file:
        lines.append(f"| replay data | `{card.replay_file}` |")
    if card.mlflow_run_id:
        lines.append(f"| MLflow run | `{card.mlflow_run_id}` ({card.mlflow_tracking_uri}) |")
    if card.registered_as:
        lines.append(f"| registered | `{card.registered_as}` |")
    if card.flags:
        lines.append(f"| flags | {', '.join(card.flags)} |")
    lines += [
        "",
        "## Intended use",
        "",
        card.intended_use or (
            f"Molecular dynamics, relaxations and NEB of solids made of {', '.join(card.elements)} close to the "
            "training configurations, for screening ionic transport with ionscreen. Check new chemistries "
            "against DFT before trusting the numbers."),
        "",
        "## Data",
        "",
        f"Dataset `{ds.path}`, hash `{ds.dataset_hash}`: {ds.n_frames} frames, {ds.n_atoms} atoms. "
        f"Splits ({'grouped by ' + ds.split_group_by if ds.split_group_by else 'by structure hash'}): train {ds.split_counts.get('train', 0)}, valid {ds.split_counts.get('valid', 0)}, "
        f"test {ds.split_counts.get('test', 0)}.",
        "",
        "Atoms per element: " + ", ".join(f"{k} {v}" for k, v in ds.element_atom_counts.items()) + ".",
        "",
        "Frames per config type: " + ", ".join(f"{k} {v}" for k, v in ds.config_type_counts.items()) + ".",
    ]
    if ds.sources:
        lines += ["", "Sources:", ""] + [f"- {s}" for s in ds.sources]
    lines += [
        "",
        "## Architecture",
        "",
        "| setting | value |",
        "| --- | --- |",
    ] + [f"| {k} | {v} |" for k, v in card.architecture.items()] + [
        "",
        (f"Reference energies E0 ({card.e0s_method}): " + ", ".join(f"{k} {v:.6f} eV" for k, v in card.e0s_eV.items()) + "."
         if card.e0s_eV else f"Reference energies E0: {card.e0s_method}."),
        "",
        "## Training",
        "",
        f"Epochs run: {card.epochs_run}."
        + ("" if not card.best_valid else " Best validation: " + ", ".join(f"{k} {v:.2f}" for k, v in card.best_valid.items()) + "."),
        "",
        "<details><summary>All mace-torch flags</summary>",
        "",
        "| flag | value |",
        "| --- | --- |",
    ] + [f"| {k} | `{v}` |" for k, v in sorted(card.hyperparameters.items())] + ["", "</details>", ""]
    lines += ["## Errors on the held-out test split", ""]
    if card.test is None:
        lines += ["No test split: no test errors.", ""]
    else:
        t = card.test
        lines += [
            f"{t.n_frames} frames, {t.n_atoms} atoms, evaluated in {t.dtype} (head '{t.head}'). Values with 95% "
            "bootstrap intervals over frames. Energy per atom; forces per Cartesian component; stress per Voigt "
            "component." + (f" Flags: {', '.join(t.flags)}." if t.flags else ""),
            "",
            "| group | frames | atoms | E MAE meV/atom | E RMSE meV/atom | F MAE meV/Å | F RMSE meV/Å | σ MAE meV/Å³ |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            _error_row("all", t.overall),
        ]
        lines += [_error_row(f"element {el}", es) for el, es in t.per_element.items()]
        lines += [_error_row(f"config {ct}", es) for ct, es in t.per_config_type.items()]
        lines.append("")
    if card.validation:
        lines += render_validation_section(card.validation)
    lines += ["## Limitations", ""] + [f"- {x}" for x in (card.limitations or default_limitations(card))] + [""]
    lines += [
        "## Use",
        "",
        "```",
        f"ionscreen models info {card.registered_as or card.model_file}",
        "```",
        "",
    ]
    return "\n".join(lines)
