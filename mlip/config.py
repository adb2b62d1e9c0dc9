"""Where ionscreen keeps its data and which services it talks to.

Settings come from, in increasing priority: built-in defaults, a TOML config file
(``$IONSCREEN_CONFIG``, else ``$IONSCREEN_HOME/config.toml``), and environment variables.
Defaults are the embedded, one-machine setup: everything under one data directory. A team points every host at
shared services instead: the job store on PostgreSQL (``db_url``), an MLflow tracking server
(``mlflow_tracking_uri = "http://host:5000"``, which then also stores and serves the artifacts) and a Ray
cluster (``ray_address``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from mlip.errors import ConfigError

_ENV_PREFIX = "IONSCREEN_"


def _default_mace_cache_dir() -> Path:
    # Same rule as mace-torch's get_cache_dir(), computed here so that reading the config does not
    # import mace (which imports torch and flips a process-wide torch.load switch).
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mace"


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Paths are absolute."""

    home: Path
    db_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_location: str
    device: str = "auto"
    trust_registry: bool = True
    api_reads_require_token: bool = False
    mlflow_ui_url: str | None = None
    registry_signing_key_file: Path | None = None
    ray_address: str | None = None
    config_file: Path | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def model_cache_dir(self) -> Path:
        """mace-torch's download cache for foundation models (``$XDG_CACHE_HOME/mace``)."""
        return _default_mace_cache_dir().resolve()

    @property
    def mlflow_is_server(self) -> bool:
        """Whether MLflow is a tracking server (http/https) rather than a database this process opens itself."""
        return is_tracking_server(self.mlflow_tracking_uri)

    def experiment_artifact_location(self, experiment: str) -> str | None:
        """Where a new MLflow experiment keeps its artifacts: under ``mlflow_artifact_location``, or None (the
        tracking server's own root: ``mlflow-artifacts:/`` when it serves artifacts) when that is empty."""
        if not self.mlflow_artifact_location:
            return None
        return self.mlflow_artifact_location.rstrip("/") + "/" + experiment

    @property
    def trust_store_path(self) -> Path:
        return self.home / "trusted_models.json"

    @property
    def signing_key_path(self) -> Path:
        """The team's registry signing key (HMAC): the configured file, else ``$IONSCREEN_HOME/registry-signing.key``."""
        return self.registry_signing_key_file or self.home / "registry-signing.key"

    @property
    def registry_cache_dir(self) -> Path:
        return self.home / "registry-cache"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


# Keys a config file / environment may set, with their parser.
def _parse_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _parse_device(key: str, value: object) -> str:
    text = str(value).strip().lower()
    if text not in {"auto", "cpu", "cuda"} and not text.startswith("cuda:"):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return text


_KEYS = {
    "db_url": str,
    "mlflow_tracking_uri": str,
    "mlflow_artifact_location": str,
    "device": _parse_device,
    "trust_registry": _parse_bool,
    # web server (`ionscreen serve`): reads open unless this is true; writes always need a token
    "api_reads_require_token": _parse_bool,
    # base URL of an MLflow UI (e.g. http://127.0.0.1:5000) for run links on candidate pages
    "mlflow_ui_url": str,
    # the team's shared secret for signing registered models (see mlip.signing); a file readable only by its owner
    "registry_signing_key_file": str,
    # a Ray cluster for `ionscreen screen` and `jobs resume` ("auto", "ray://head:10001", "head:6379"): used when
    # neither --address nor RAY_ADDRESS is given; unset: an in-process Ray instance
    "ray_address": str,
}


def is_tracking_server(uri: str) -> bool:
    """An MLflow tracking URI that names a server (``http(s)://host:port``), as opposed to a local store."""
    return uri.split(":", 1)[0].strip().lower() in {"http", "https"}


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from the environment (``os.environ`` unless given) and the config file."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get(_ENV_PREFIX + "HOME", "./.ionscreen")).expanduser().resolve()
    config_file = Path(env.get(_ENV_PREFIX + "CONFIG", home / "config.toml")).expanduser()

    values: dict[str, object] = {}
    sources: dict[str, str] = {"home": "env" if _ENV_PREFIX + "HOME" in env else "default"}
    if config_file.is_file():
        try:
            data = tomllib.loads(config_file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {config_file} is not valid TOML: {err}") from err
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(
                f"config file {config_file} has unknown key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(_KEYS))}"
            )
        for key, value in data.items():
            values[key] = _KEYS[key](key, value) if _KEYS[key] is not str else str(value)
            sources[key] = str(config_file)
    elif _ENV_PREFIX + "CONFIG" in env:
        raise ConfigError(f"IONSCREEN_CONFIG points to {config_file}, which does not exist")

    for key, parse in _KEYS.items():
        env_key = _ENV_PREFIX + key.upper()
        if env_key in env:
            values[key] = parse(env_key, env[env_key]) if parse is not str else env[env_key]
            sources[key] = "env"

    defaults = {
        "db_url": f"sqlite:///{home / 'ionscreen.db'}",
        "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
    }
    for key, value in defaults.items():
        if key not in values:
            values[key] = value
            sources[key] = "default"
    # Artifacts: a tracking server keeps them (an empty location lets it choose: its served mlflow-artifacts:/ root,
    # which every host reaches); a local store keeps them under the data directory. Empty counts as unset.
    if not values.get("mlflow_artifact_location"):
        server = is_tracking_server(str(values["mlflow_tracking_uri"]))
        values["mlflow_artifact_location"] = "" if server else (home / "mlartifacts").as_uri()
        sources["mlflow_artifact_location"] = "default"

    return Settings(
        home=home,
        db_url=str(values["db_url"]),
        mlflow_tracking_uri=str(values["mlflow_tracking_uri"]),
        mlflow_artifact_location=str(values["mlflow_artifact_location"]),
        device=str(values.get("device", "auto")),
        trust_registry=bool(values.get("trust_registry", True)),
        api_reads_require_token=bool(values.get("api_reads_require_token", False)),
        mlflow_ui_url=str(values["mlflow_ui_url"]).rstrip("/") if values.get("mlflow_ui_url") else None,
        registry_signing_key_file=(Path(str(values["registry_signing_key_file"])).expanduser().resolve()
                                   if values.get("registry_signing_key_file") else None),
        ray_address=str(values.get("ray_address") or "").strip() or None,
        config_file=config_file if config_file.is_file() else None,
        sources=sources,
    )


def mask_password(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part (and a ``password=`` query parameter, which libpq
    reads too) replaced by ``***`` (for printing and logs).

    Follows SQLAlchemy's reading, in which a password may hold ``/`` (``postgresql://u:pa/ss@h/db``), and masks
    up to the last ``@``: masking too much is harmless, showing part of a password is not."""
    return _QUERY_PASSWORD.sub(r"\1***", _USER_PASSWORD.sub(r"\1***@", url, count=1))


_USER_PASSWORD = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@]*:).*@", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def settings_as_dict(settings: Settings) -> dict[str, str]:
    """A printable view of the settings (for ``ionscreen config``): passwords in URLs masked."""
    out = {}
    for f in fields(settings):
        if f.name == "sources":
            continue
        out[f.name] = mask_password(str(getattr(settings, f.name)))
    if not settings.mlflow_artifact_location:
        out["mlflow_artifact_location"] = "(the MLflow tracking server's)"
    out["model_cache_dir"] = str(settings.model_cache_dir)
    out["trust_store"] = str(settings.trust_store_path)
    return out


__all__ = ["Settings", "is_tracking_server", "load_settings", "mask_password", "settings_as_dict", "replace"]
