"""Kill a labelling command mid-run, as a crash would: the test helper the resumability tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_label_run_after(cmd: list[str], frames_dir: Path, n_frames: int, *, timeout_s: float = 180.0,
                         poll_s: float = 0.05) -> dict[str, tuple[int, bytes]]:
    """Start ``cmd`` (one thread), SIGKILL it as soon as ``frames_dir`` holds ``n_frames`` labelled frames (it must
    still be running then), and return each frame file's (mtime, bytes) at the kill."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if frames_dir.exists() and len(list(frames_dir.glob("*.extxyz"))) >= n_frames:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in frames_dir.glob("*.extxyz")}
