"""Small helpers every ionscreen package shares, in the bottom layer: canonical hashes of data, atomic file writes,
advisory file locks (POSIX ``flock``; the data directory may sit on a shared file system) and worker processes that
end with their parent."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: equal data, equal text (the input of every ionscreen hash)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_sha256(data: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never half of it, and a crash
    right after leaves the new (file and directory entry flushed to disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file should look like any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")


def synchronize(device: str) -> None:
    """Wait until the device has finished its queued work (a GPU timing measures nothing otherwise); no-op on CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class LockBusy(RuntimeError):
    """Another process holds the lock (non-blocking mode)."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    ``blocking=False`` raises :class:`LockBusy` at once when another process holds it; ``timeout_s`` waits that
    long (polling each second) before raising it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if blocking and deadline is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if deadline is None or time.monotonic() > deadline:
                    raise LockBusy(f"{path} is locked by another process") from err
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_or_refuse(path: str | Path, busy: str, *, timeout_s: float | None = None,
                        error: type[Exception] | None = None) -> Iterator[None]:
    """Hold the lock at ``path``; if another process holds it (at once, or after ``timeout_s``), raise ``error``
    (default :class:`mlip.errors.InputError`) with the message ``busy``. Only taking the lock is guarded: a
    :class:`LockBusy` from inside the block is not mistaken for this lock being busy."""
    from mlip.errors import InputError

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, blocking=timeout_s is not None, timeout_s=timeout_s))
        except LockBusy as err:
            raise (error or InputError)(busy) from err
        yield


def end_with_parent(parent_pid: int) -> None:
    """End this process with SIGTERM as soon as its parent ``parent_pid`` ends, however the parent ended.

    For worker processes that run for hours: a worker left behind by a killed driver would go on computing and
    writing checkpoints in directories that the driver's next run takes over. On Linux the kernel sends the signal
    (``prctl(PR_SET_PDEATHSIG)``). The kernel watches the parent's thread that started this process, so that thread
    must outlive the worker, as one blocked in a process pool's ``with`` block does. Elsewhere a daemon thread checks
    the parent every second. A parent that is already gone ends this process at once."""
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            armed = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent ended before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
