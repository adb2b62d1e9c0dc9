"""Signatures that let a team trust each other's registered models without trusting the registry.

Anyone who can reach an MLflow server can register a file and set any tag on it, so a tag can never make a
file loadable (loading a ``.model`` file unpickles it: it runs code). A version that ionscreen registers
carries ``ionscreen.signature``: an HMAC-SHA256, under the team's secret key, of the file's SHA-256. A
machine that holds the same key (``registry_signing_key_file``, a file only its owner can read) verifies
it before unpickling; without the key, or with a signature that does not verify, only the local trust
store decides.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from mlip.config import Settings
from mlip.errors import ConfigError

TAG_SIGNATURE = "ionscreen.signature"
_DOMAIN = b"ionscreen model sha256 v1:"  # what is signed is never just a bare hash
KEY_BYTES = 32


def create_key(path: Path) -> Path:
    """Write a new random key to ``path`` (mode 0600); refuses to overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as err:
        raise ConfigError(f"{path} already exists; remove it first if you really mean to replace the team key") from err
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def read_key(path: Path) -> bytes | None:
    """The key at ``path``, or None if there is none; a key that others can read or that is malformed is an error."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"registry signing key {path} is readable by others (mode {stat.filemode(info.st_mode)}); "
                          f"run `chmod 600 {path}`")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as err:
        raise ConfigError(f"registry signing key {path} is not hex text") from err
    if len(key) < KEY_BYTES:
        raise ConfigError(f"registry signing key {path} has {len(key)} bytes; at least {KEY_BYTES} are needed")
    return key


def sign(sha256: str, key: bytes) -> str:
    """The signature of a file with SHA-256 ``sha256`` (hex)."""
    return hmac.new(key, _DOMAIN + sha256.encode(), hashlib.sha256).hexdigest()


def verify(sha256: str, signature: str | None, key: bytes | None) -> bool:
    """Whether ``signature`` is this key's signature of ``sha256`` (constant-time comparison)."""
    if not signature or key is None:
        return False
    # as bytes: compare_digest raises TypeError on str holding non-ASCII, and a tag is anyone's to set
    return hmac.compare_digest(sign(sha256, key).encode(), signature.encode("utf-8", "replace"))


def registry_signature_verifies(tags: dict[str, str], sha256: str, settings: Settings) -> bool:
    """Whether a registry version's tags sign its file (SHA-256 ``sha256``) with this machine's team key.

    The registry's other tags never decide: any MLflow client can set them."""
    if not settings.trust_registry or not sha256:
        return False
    return verify(sha256, tags.get(TAG_SIGNATURE), read_key(settings.signing_key_path))
