"""``mlip.util.end_with_parent``: a worker process ends when its parent ends, by the kernel's parent-death signal
on Linux and by the polling thread where that is missing (forced here by making the child believe it is not on
Linux). The validation workers' use of it is tested in ``test_validate.py``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

# the parent starts the worker, waits until the worker has armed the signal, then dies without any clean-up
PARENT = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2], sys.argv[3]])
print(worker.pid, flush=True)
deadline = time.time() + 60
while not os.path.exists(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.02)
os._exit(0)
"""

WORKER = """
import sys, time
sys.path.insert(0, {root!r})
if sys.argv[2] == "poll":
    sys.platform = "darwin"
from mlip.util import end_with_parent
end_with_parent(int(sys.argv[1]))
open(sys.argv[3], "w").close()
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["signal", "poll"])
def test_a_worker_ends_when_its_parent_dies(tmp_path, how):
    armed = tmp_path / "armed"
    parent = subprocess.run([sys.executable, "-c", PARENT, WORKER.format(root=str(ROOT)), how, str(armed)],
                            capture_output=True, text=True, timeout=90)
    assert parent.returncode == 0 and armed.exists(), parent.stderr[-2000:]
    worker_pid = int(parent.stdout.split()[0])
    try:
        worker = psutil.Process(worker_pid)
    except psutil.NoSuchProcess:
        return  # already gone
    try:
        gone, alive = psutil.wait_procs([worker], timeout=10)
        assert not alive, f"the worker ({how}) still runs after its parent died"
    finally:
        if worker.is_running():
            worker.kill()


def test_a_worker_whose_parent_is_already_gone_ends_at_once(tmp_path):
    """The parent died before the worker armed the signal: the worker must not run on (the kernel's signal would
    never come, since its parent is now another process)."""
    code = WORKER.format(root=str(ROOT))
    started = time.time()
    worker = subprocess.run([sys.executable, "-c", code, "1", "signal", str(tmp_path / "armed")],  # pid 1: not its parent
                            capture_output=True, timeout=60)
    assert worker.returncode == -15 and not (tmp_path / "armed").exists()
    assert time.time() - started < 30
