"""MACE foundation models (``mace-mp:<name>``): where they are cached and how they are fetched.

Downloading goes through mace-torch's own downloader (``download_mace_mp_checkpoint``), so the
file lands where mace-torch itself would look for it. A download is trusted only if its SHA-256 equals
the hash pinned for that name in :data:`PINNED_SHA256` (a file that does not match is deleted and
refused). A name without a pinned hash, or a file copied into the cache by hand, must be trusted
explicitly (``ionscreen models trust mace-mp:<name>``) after its hash has been compared with the one
the release publishes, because nothing else vouches for its content: the download's URL does not.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

from mlip._mace import import_mace, quiet_stdout
from mlip.errors import ModelNotFoundError, ModelUnavailableOffline


#: Name → SHA-256 of the released file, as published with the release (GitHub shows each asset's
#: digest). Add a name here only after comparing the hash with the published one; names missing here
#: are downloaded but not trusted until someone who checked runs ``ionscreen models trust``.
PINNED_SHA256: dict[str, str] = {}


def foundation_urls() -> dict[str, str]:
    """Name → download URL, from mace-torch's table (the single source of truth)."""
    import_mace()
    from mace.calculators.foundations_models import mace_mp_urls

    return dict(mace_mp_urls)


def cache_file_name(url: str) -> str:
    # mace-torch keeps only alphanumerics and "_" of the URL's basename.
    return "".join(c for c in os.path.basename(url) if c.isalnum() or c == "_")


def expected_cache_path(name: str, cache_dir: Path) -> Path:
    urls = foundation_urls()
    if name not in urls:
        raise ModelNotFoundError(
            f"unknown foundation model mace-mp:{name}; known names: {', '.join(sorted(urls))}"
        )
    return cache_dir / cache_file_name(urls[name])


def download(name: str, cache_dir: Path) -> Path:
    """Return the cached file for ``mace-mp:<name>``, downloading it if needed.

    Offline, the error names the exact path to copy the file to and where to get it.
    """
    target = expected_cache_path(name, cache_dir)
    if target.is_file():
        return target
    url = foundation_urls()[name]
    from mace.calculators import foundations_models
    from mace.tools.utils import get_cache_dir

    if Path(get_cache_dir()).resolve() != cache_dir.resolve():
        raise ModelNotFoundError(
            f"mace-torch would download into {get_cache_dir()}, not {cache_dir}; "
            "set XDG_CACHE_HOME consistently"
        )
    try:
        with quiet_stdout():
            path = Path(foundations_models.download_mace_mp_checkpoint(name))
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, RuntimeError) as err:
        raise ModelUnavailableOffline(
            f"mace-mp:{name} is not cached and could not be downloaded from {url} ({err}). "
            f"Copy the file to {target} (download it on a machine with internet), then run "
            f"`ionscreen models trust mace-mp:{name}`."
        ) from err
    return path
