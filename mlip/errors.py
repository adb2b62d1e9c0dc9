"""The exception hierarchy shared by every ionscreen package.

Each error says what is wrong and how to fix it; callers chain the cause with ``raise ... from err``.
It lives in ``mlip`` because ``mlip`` is the bottom of the dependency chain (workflows → screening,
training → mlip), so every other package can import it.
"""

from __future__ import annotations


class IonscreenError(Exception):
    """Base class of every error ionscreen raises on purpose."""


class InputError(IonscreenError, ValueError):
    """Something the user gave us (a file, a reference, a parameter) is not usable as given."""


class ConfigError(InputError):
    """The configuration (environment or config file) is invalid."""


class ModelNotFoundError(InputError):
    """A model reference does not resolve to a model file."""


class ModelUnavailableOffline(ModelNotFoundError):
    """A foundation model is not cached and cannot be downloaded (no network)."""


class UntrustedModelError(IonscreenError):
    """A model file's SHA-256 is not trusted, so it is not unpickled (unpickling runs code)."""


class ModelDomainError(IonscreenError):
    """A model is asked to run a structure outside its domain (e.g. elements it was not trained on)."""


class SimulationFailed(IonscreenError):
    """A simulation ran but failed (exploded, NaN, did not converge where convergence is required)."""


class ModelMismatchError(IonscreenError):
    """A loaded model is not the one a job was planned with (its SHA-256 differs), so its results are refused."""
