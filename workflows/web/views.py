"""What pages and API share: the table's URL parameters (one parser for both), number formatting with units and
intervals, quality-flag explanations, CSV rows, and MLflow run links."""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup, escape
from pydantic import ValidationError

from workflows.db.summaries import BrowseQuery, SummaryRecord

#: URL parameter → BrowseQuery field. Short names keep shared links readable.
TABLE_PARAMS: dict[str, str] = {
    "q": "text",
    "ion": "working_ion",
    "kind": "kind",
    "has": "elements_present",
    "lacks": "elements_absent",
    "min_sigma": "min_conductivity_mS_cm",
    "max_ea": "max_activation_energy_eV",
    "max_barrier": "max_barrier_eV",
    "clean": "no_flags",
    "job": "job",
    "sort": "sort",
    "order": "order",
    "page": "page",
    "per_page": "per_page",
}
_FIELD_PARAM = {field: param for param, field in TABLE_PARAMS.items()}
_LIST_FIELDS = {"elements_present", "elements_absent"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tabs and line breaks are only whitespace

#: What each quality flag means, for badges (titles) and the candidate page.
FLAG_HELP: dict[str, str] = {
    "not_diffusive": "MSD not linear in the fitted window, or too few hops: D is ill-defined at some temperature",
    "few_hops": "fewer distinct ion hops than the protocol's minimum: poor statistics",
    "unstable_md": "atoms too close, exploding energy or temperature: the numbers may be artefacts",
    "framework_melted": "framework atoms diffuse: σ describes a melt, not the solid",
    "framework_disordered": "framework atoms move far from their sites without diffusing (rotating polyanions, "
                            "disorder): σ is of the disordered solid",
    "thermostat_off": "mean temperature off its target",
    "short_run": "interval wider than the protocol accepts",
    "target_not_met": "adaptive run spent its budget before reaching its precision target",
    "few_temperatures": "fewer than two usable temperatures: no Arrhenius fit behind σ(300 K) and Ea",
    "non_arrhenius": "points scatter beyond their error bars around the Arrhenius line",
    "neb_not_converged": "NEB band force above tolerance: the barrier is uncertain",
    "endpoint_not_converged": "an NEB endpoint relaxation hit its step budget",
    "endpoint_drifted": "the moving ion left its site while an endpoint relaxed",
    "intermediate_minimum": "the path holds another minimum: the barrier is of a composite hop",
    "hop_too_long": "a hop did not fit the supercell: the network may be incomplete",
    "neb_failed": "an NEB calculation failed; nothing computed for that hop",
    "not_computed": "hops skipped (max_hops): percolation thresholds are upper bounds",
    "incomplete_hops": "some hop classes have no barrier: thresholds are upper bounds",
    "uses_flagged_hops": "the percolating network uses a flagged hop",
    "no_hops": "no hop was found for the working ion",
}
SEVERE_FLAGS = {"unstable_md", "framework_melted", "neb_failed"}


class QueryError(ValueError):
    """Table parameters that do not validate; ``errors`` are FastAPI-style items naming the URL parameter."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors))


def _control_characters(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Errors for table parameters holding control characters (PostgreSQL refuses NUL in text; no filter needs any)."""
    getlist = getattr(params, "getlist", None)
    errors = []
    for param in TABLE_PARAMS:
        values = getlist(param) if getlist else [params.get(param)]
        if any(isinstance(v, str) and _CONTROL.search(v) for v in values):
            errors.append({"loc": ["query", param], "msg": "control characters (such as NUL) are not allowed",
                           "type": "string_control_characters"})
    return errors


def browse_query(params: Mapping[str, Any]) -> BrowseQuery:
    """The table query from URL parameters (a Starlette QueryParams or a plain dict). QueryError if invalid."""
    errors = _control_characters(params)
    if errors:
        raise QueryError(errors)
    raw: dict[str, Any] = {}
    getlist = getattr(params, "getlist", None)
    for param, field in TABLE_PARAMS.items():
        if field in _LIST_FIELDS:
            values = getlist(param) if getlist else ([params[param]] if param in params else [])
            values = [v for v in values if isinstance(v, str) and v.strip()]
            if values:
                raw[field] = values
            continue
        value = params.get(param)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        raw[field] = value
    try:
        return BrowseQuery.model_validate(raw)
    except ValidationError as err:
        errors = []
        for item in err.errors():
            field = item["loc"][0] if item["loc"] else ""
            errors.append({"loc": ["query", _FIELD_PARAM.get(str(field), str(field) or "query")],
                           "msg": item["msg"].removeprefix("Value error, "), "type": item["type"]})
        raise QueryError(errors) from None


def query_params(query: BrowseQuery, **changes: Any) -> dict[str, Any]:
    """URL parameters that reproduce ``query`` (defaults left out), with ``changes`` (field names) applied."""
    data = query.model_dump()
    data.update(changes)
    defaults = BrowseQuery().model_dump()
    out: dict[str, Any] = {}
    for field, value in data.items():
        if value == defaults.get(field) or value is None or value == ():
            continue
        param = _FIELD_PARAM[field]
        if field in _LIST_FIELDS:
            out[param] = " ".join(value)
        elif isinstance(value, bool):
            out[param] = "1"
        else:
            out[param] = getattr(value, "value", value)
    return out


def query_string(query: BrowseQuery, **changes: Any) -> str:
    params = query_params(query, **changes)
    return urlencode(params)


# ---------------------------------------------------------------------------------------------- numbers
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def num(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` significant figures; powers of ten as ×10ⁿ; '—' for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if -3 <= exponent < 4:
        decimals = max(digits - 1 - exponent, 0)
        return f"{value:.{decimals}f}"
    mantissa = value / 10**exponent
    return f"{mantissa:.{digits - 1}f}×10{str(exponent).translate(_SUPERSCRIPT)}"


def interval(lo: float | None, hi: float | None, digits: int = 2) -> str:
    if lo is None and hi is None:
        return ""
    return f"[{num(lo, digits)}, {num(hi, digits)}]"


def formula_html(formula: str) -> Markup:
    """Li6PS5Cl → Li<sub>6</sub>PS<sub>5</sub>Cl (escaped)."""
    return Markup(re.sub(r"(\d+(?:\.\d+)?)", r"<sub>\1</sub>", str(escape(formula))))


def short_model(ref: str, sha256: str | None = None) -> str:
    text = ref
    if "/" in ref and not ref.startswith("models:/"):
        text = ref.rsplit("/", 1)[-1]  # a file path: its name is enough in a table
    return f"{text} ({sha256[:8]})" if sha256 else text


# ---------------------------------------------------------------------------------------------- CSV
CSV_COLUMNS = (
    "rank", "score", "name", "formula", "working_ion", "kind", "elements",
    "conductivity_300K_mS_cm", "conductivity_300K_ci95_lo_mS_cm", "conductivity_300K_ci95_hi_mS_cm",
    "activation_energy_eV", "activation_energy_ci95_lo_eV", "activation_energy_ci95_hi_eV",
    "migration_barrier_eV", "percolation_barrier_eV", "percolation_dimension",
    "flags", "model_ref", "model_sha256", "candidate_id",
)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # keep spreadsheets from running a name as a formula
    return value


def csv_text(rows: Iterable[SummaryRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for column in CSV_COLUMNS:
            value = getattr(row, column)
            if column == "flags":
                value = ";".join(value)
            elif column == "elements":
                value = " ".join(row.element_list)
            values.append(_cell(value))
        writer.writerow(values)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- MLflow
@functools.lru_cache(maxsize=256)
def _experiment_of(tracking_uri: str, run_id: str) -> str | None:
    try:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a missing run only loses the link, never the page
        return None


def mlflow_run_url(settings, run_id: str | None) -> str | None:
    """Link into the MLflow UI (``mlflow_ui_url`` in the config) for a run, or None when no UI is configured."""
    if not run_id or not settings.mlflow_ui_url:
        return None
    experiment = _experiment_of(settings.mlflow_tracking_uri, run_id)
    if experiment is None:
        return None
    return f"{settings.mlflow_ui_url}/#/experiments/{experiment}/runs/{run_id}"


__all__ = [
    "CSV_COLUMNS",
    "FLAG_HELP",
    "QueryError",
    "SEVERE_FLAGS",
    "TABLE_PARAMS",
    "browse_query",
    "csv_text",
    "formula_html",
    "interval",
    "mlflow_run_url",
    "num",
    "query_params",
    "query_string",
    "short_model",
]
