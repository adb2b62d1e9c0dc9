"""Kill a command mid-run, as a crash would: the helpers the resumability tests (labelling, training) share."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(cmd: list[str], ready: Callable[[], bool], *, timeout_s: float = 180.0, poll_s: float = 0.05) -> None:
    """Start ``cmd`` (one thread) and SIGKILL it as soon as ``ready()`` is true; it must still be running then."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while not ready():
        assert proc.poll() is None, f"{cmd[3:5]} ended before the kill:\n{proc.stdout.read().decode()}"
        assert time.time() < deadline, f"{cmd[3:5]} not ready to be killed after {timeout_s:.0f} s"
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def kill_label_run_after(cmd: list[str], frames_dir: Path, n_frames: int, *, timeout_s: float = 180.0,
                         poll_s: float = 0.05) -> dict[str, tuple[int, bytes]]:
    """Start ``cmd``, SIGKILL it as soon as ``frames_dir`` holds ``n_frames`` labelled frames (it must still be
    running then), and return each frame file's (mtime, bytes) at the kill."""
    kill_when(cmd, lambda: frames_dir.exists() and len(list(frames_dir.glob("*.extxyz"))) >= n_frames,
              timeout_s=timeout_s, poll_s=poll_s)
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in frames_dir.glob("*.extxyz")}
