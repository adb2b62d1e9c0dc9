"""The SLURM recipe docs/cluster/ionscreen.sbatch on a real one-host SLURM: munged, slurmctld and slurmd started here
with their own configuration, key, ports and state under tmp_path; a tiny screening job submitted with sbatch --wait.

Needs Debian's slurm-wlm and munge (.ci/setup.sh installs them) and root (SlurmUser=root, as the daemons here run).
Every process the daemons and the job start carries a marker in its environment, so teardown can find and end each
one by its pid, whatever state a failure left them in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mlip.loader import trust
from protocols import short_protocol

# one xdist worker runs the cluster tests one after the other: each starts daemons and several Ray nodes
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

SBATCH = Path(__file__).resolve().parents[1] / "docs" / "cluster" / "ionscreen.sbatch"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel", "squeue", "srun", "scontrol")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
MARKER = "IONSCREEN_TEST_SLURM"  # environment marker of every process this test's SLURM starts


def _program(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _why_not() -> str | None:
    missing = [name for name in PROGRAMS if _program(name) is None]
    if missing:
        return f"SLURM/munge programs missing: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the one-host SLURM here runs its daemons as root (SlurmUser=root)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _marked_pids(token: str) -> list[int]:
    """Pids of the processes whose environment holds MARKER=token (the daemons and everything the job started)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class OneHostSlurm:
    """munged + slurmctld + slurmd for this host, configured and kept under ``root`` (short paths for sockets)."""

    def __init__(self, root: Path, short: Path):
        self.root, self.short = root, short
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: self.token,
                    "PATH": SEARCH_PATH}

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True)
        munge = self.short / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = munge / "munge.sock"
        self._spawn("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                    f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}")
        self._until(self.munge_socket.exists, 15, "munged did not create its socket")
        ctld_port, slurmd_port = _free_ports(2)
        cpus = len(os.sched_getaffinity(0))
        self.conf.write_text("\n".join([
            "ClusterName=ionscreen-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",
            # sbatch --wait polls every 2 s only while MinJobAge is 0 (it backs off to 32 s otherwise); 0 also keeps
            # the finished job's record for scontrol
            "MinJobAge=0",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", self.host, "-f", str(self.conf))
        self._until(self._idle, 30, "the node did not become idle in sinfo")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen([_program(name), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))
        log.close()

    def _until(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} ({'exited: ' + ', '.join(dead) if dead else f'{timeout_s} s'}); "
                                   f"logs:\n{self.logs()}")
            time.sleep(0.3)

    def _idle(self) -> bool:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False).stdout.split()
        return out[:2] == [self.host, "idle"]

    def run(self, name: str, *args: str, env: dict | None = None, check: bool = True, timeout: float = 30):
        done = subprocess.run([_program(name), *args], env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:]
                         for f in sorted((self.root / "log").glob("*")))

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then end any process still carrying this SLURM's marker."""
        if all(proc.poll() is None for proc in self.procs[1:]):
            try:
                self.run("scancel", "--full", "--user=root", check=False, timeout=10)
                deadline = time.monotonic() + 10
                while (time.monotonic() < deadline
                       and self.run("squeue", "--noheader", check=False, timeout=10).stdout.strip()):
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _marked_pids(self.token)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]


@pytest.fixture
def slurm(tmp_path):
    if why := _why_not():
        pytest.skip(why)
    short = Path(tempfile.mkdtemp(prefix="is-slurm-"))  # Unix socket paths must stay under 108 bytes
    cluster = OneHostSlurm(tmp_path / "slurm", short)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_sbatch_recipe_runs_a_screen_on_one_host(slurm, tmp_path, soft_model_file, settings):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    model = job_dir / "soft.model"
    model.write_bytes(soft_model_file.read_bytes())
    trust(str(model), settings)
    job_file = job_dir / "slurm-test.yaml"
    job_file.write_text(yaml.safe_dump({
        "name": "slurm-test",
        "model": "soft.model",
        "working_ion": "Li",
        "candidates": [{"library": "Li2S"}],
        "transport": {"overrides": short_protocol(equilibration_ps=0.02, production_ps=0.1,
                                                  supercell_min_length_A=5.0, relax_max_steps=5)},
        "resources": {"workers": 1, "threads_per_worker": 1},
    }, sort_keys=False))

    ray_port, agent_port = _free_ports(2)
    ray_tmp = slurm.short / "ray"
    venv_bin = str(Path(sys.executable).parent)
    # os.environ carries the isolated IONSCREEN_HOME (and IONSCREEN_DB_URL / MLflow settings when set), XDG_CACHE_HOME
    # and OMP_NUM_THREADS from conftest; sbatch --export=ALL hands all of it to the job
    env = {**slurm.env, "PATH": os.pathsep.join([venv_bin, SEARCH_PATH]), "JOB_FILE": str(job_file),
           "RAY_PORT": str(ray_port), "RAY_WAIT_S": "60",
           "RAY_START_ARGS": f"--dashboard-agent-listen-port={agent_port} --temp-dir={ray_tmp}"}
    output = tmp_path / "slurm-%j.out"
    started = time.monotonic()
    submitted = slurm.run("sbatch", "--wait", "--parsable", "--export=ALL", "--time=5", f"--chdir={job_dir}",
                          f"--output={output}", str(SBATCH), env=env, check=False, timeout=300)
    wall_s = time.monotonic() - started
    slurm_id = submitted.stdout.strip().split(";")[0]
    log = output.with_name(f"slurm-{slurm_id}.out")
    text = log.read_text(errors="replace") if log.exists() else "(no job output)"
    assert submitted.returncode == 0, f"sbatch exit {submitted.returncode}: {submitted.stderr}\n{text[-6000:]}"

    # the script's own steps, in order: one node, the shared-directory check passed, Ray up, the screen, Ray stopped
    said = re.findall(r"^ionscreen\.sbatch \d\d:\d\d:\d\d: (.*)$", text, re.M)
    assert said[0].startswith(f"job {slurm_id}, 1 node(s)"), said
    assert [line.split(" at ")[0] for line in said[1:]] == [
        "the Ray head answers", "ionscreen screen exited with 0; stopping Ray", "Ray stopped"], said
    assert not list(settings.home.glob(".shared-fs-check.*"))  # the marker is cleaned up
    state = slurm.run("scontrol", "show", "job", slurm_id).stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state
    leftovers = [f"{pid} {_comm(pid)}" for pid in _marked_pids(slurm.token) if _comm(pid) in ("raylet", "gcs_server")]
    assert not leftovers, f"Ray processes outlived the job: {leftovers}"

    # the results are in the database the test's IONSCREEN_HOME names
    job_id = text.split("\njob ", 1)[1].split(":", 1)[0]
    from workflows.db import Store

    with Store.open(settings.db_url) as store:
        job = store.jobs.get(job_id)
        assert job.status == "done", text[-4000:]
        rows = store.results.for_job(job_id)
        assert [(r["name"], r["stage"]) for r in rows] == [("Li2S", "transport")]
        assert (settings.home / rows[0]["document_path"]).is_file()
    from typer.testing import CliRunner

    from workflows.cli import app

    shown = CliRunner().invoke(app, ["results", job_id[:8], "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert [row["name"] for row in json.loads(shown.stdout)["ranked"]] == ["Li2S"]
    print(f"sbatch --wait took {wall_s:.0f} s")
