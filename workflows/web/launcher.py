"""Starting a submitted job in the background: a detached ``python -m workflows.cli jobs resume JOB`` subprocess.

The web server never runs Ray or MD itself: a job runs in its own driver process (the same code path as
``ionscreen jobs resume``), so the server stays responsive, survives the job and the job survives a server
restart. The driver's output goes to ``$IONSCREEN_HOME/jobs/<job id>/driver.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

from mlip.config import Settings


class JobLauncher(Protocol):
    """Starts the driver of a stored (planned) job; returns the driver's process id."""

    def launch(self, job_id: str) -> int: ...


def driver_command(job_id: str, python: str | None = None) -> list[str]:
    """The command line of a job driver (what ``ionscreen jobs resume JOB`` runs)."""
    return [python or sys.executable, "-m", "workflows.cli", "jobs", "resume", job_id]


def driver_log_path(settings: Settings, job_id: str) -> Path:
    return settings.home / "jobs" / job_id / "driver.log"


class SubprocessLauncher:
    """Launch each job's driver as a detached subprocess (own session: a server's Ctrl-C does not stop jobs)."""

    def __init__(self, settings: Settings, python: str | None = None):
        self.settings = settings
        self.python = python or sys.executable

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # the driver must use the same data directory and database as this server, whatever the server's env says
        env["IONSCREEN_HOME"] = str(self.settings.home)
        env["IONSCREEN_DB_URL"] = self.settings.db_url
        env["IONSCREEN_MLFLOW_TRACKING_URI"] = self.settings.mlflow_tracking_uri
        env["IONSCREEN_MLFLOW_ARTIFACT_LOCATION"] = self.settings.mlflow_artifact_location
        if self.settings.ray_address:  # run on the team's Ray cluster, as the server's config says
            env["IONSCREEN_RAY_ADDRESS"] = self.settings.ray_address
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def launch(self, job_id: str) -> int:
        log = driver_log_path(self.settings, job_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                driver_command(job_id, self.python),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=str(self.settings.home),
                start_new_session=True,
                close_fds=True,
            )
        # reap the child when it ends (no zombie while the server lives on)
        threading.Thread(target=process.wait, name=f"reap-{job_id[:8]}", daemon=True).start()
        return process.pid


__all__ = ["JobLauncher", "SubprocessLauncher", "driver_command", "driver_log_path"]
