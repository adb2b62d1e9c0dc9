"""The model layer: turns a model reference string into a trusted, ready model (MACE, or another family
behind :mod:`mlip.backends`).

Importing this package is cheap (no torch); torch and mace are imported when a model is loaded.
"""

from mlip.config import Settings, load_settings
from mlip.errors import (
    ConfigError,
    InputError,
    IonscreenError,
    ModelDomainError,
    ModelNotFoundError,
    ModelUnavailableOffline,
    SimulationFailed,
    UntrustedModelError,
)
from mlip.loader import LoadedModel, load_model, resolve, trust
from mlip.refs import ModelRef, RefKind, parse_ref

__all__ = [
    "ConfigError",
    "InputError",
    "IonscreenError",
    "LoadedModel",
    "ModelDomainError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelUnavailableOffline",
    "RefKind",
    "Settings",
    "SimulationFailed",
    "UntrustedModelError",
    "load_model",
    "load_settings",
    "parse_ref",
    "resolve",
    "trust",
]
