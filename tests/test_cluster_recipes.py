"""The cluster recipes of docs/cluster checked without a cluster: the KubeRay RayJob manifest against the fields of
KubeRay's ray.io/v1 CRD and against itself (one image, the shared volume at IONSCREEN_HOME, secrets by reference),
the Containerfile's instructions and install order, the SLURM script's syntax; and fractional GPUs per worker.

Nothing here runs Docker or Kubernetes (neither is available where the tests run); tests/test_cluster_slurm.py runs
the SLURM script for real.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docs" / "cluster"

# Fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1: rayjob_types.go, raycluster_types.go); a key
# outside these is a typo the operator would reject or silently drop.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions", "managedBy", "authOptions",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                       "template", "scaleStrategy", "suspend", "idleTimeoutSeconds"}
GCS_FT_FIELDS = {"redisAddress", "redisPassword", "redisUsername", "externalStorageNamespace"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}

DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


# ---------------------------------------------------------------------------------------------- KubeRay
@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()) if d is not None]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def _containers(cluster: dict) -> list[tuple[dict, dict]]:
    """(pod spec, container) of the head group and of every worker group."""
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    return [(pod, container) for pod in pods for container in pod["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_rayjob_has_the_fields_kuberay_requires(manifest):
    job = manifest["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["entrypoint"] == "ionscreen screen /jobs/job.yaml --address auto"
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] in SUBMISSION_MODES
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0 and spec.get("backoffLimit", 0) >= 0

    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
    # rayStartParams values are strings in the CRD (map[string]string)
    for params in [head["rayStartParams"]] + [g["rayStartParams"] for g in cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in params.values()), params


def test_rayjob_gpu_workers_and_fault_tolerance(manifest):
    cluster = manifest["RayJob"]["spec"]["rayClusterSpec"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "a worker group with GPUs"
    for group in gpu_groups:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == 1
            assert resources.get("requests", resources["limits"])["nvidia.com/gpu"] == 1

    ft = cluster["gcsFaultToleranceOptions"]
    assert set(ft) <= GCS_FT_FIELDS and ft["redisAddress"]
    assert set(ft["redisPassword"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}  # from a Secret, not inline
    # KubeRay refuses these beside gcsFaultToleranceOptions (ValidateRayClusterSpec)
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    assert "redis-password" not in head_params and "redis-username" not in head_params
    head_env = _env(cluster["headGroupSpec"]["template"]["spec"]["containers"][0])
    assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME"} & set(head_env)


def test_rayjob_images_volume_and_secrets_are_consistent(manifest):
    cluster = manifest["RayJob"]["spec"]["rayClusterSpec"]
    pairs = _containers(cluster)
    assert len({c["image"] for _, c in pairs}) == 1, "head and workers run the same image"

    claim = manifest["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod, on any node, mounts it read-write
    for pod, container in pairs:
        env = _env(container)
        home = env["IONSCREEN_HOME"]["value"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = [m for m in container["volumeMounts"]
                  if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        assert [m["mountPath"] for m in shared] == [home], container["name"]
        assert not shared[0].get("readOnly", False)
        for key in ("IONSCREEN_DB_URL", "IONSCREEN_MLFLOW_TRACKING_URI"):
            assert "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["key"], key

    # the entrypoint's job file is the ConfigMap mounted in the head pod
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    job_file = manifest["RayJob"]["spec"]["entrypoint"].split()[2]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in head_pod["containers"][0]["volumeMounts"]}
    config_map = mounts[str(Path(job_file).parent)]["configMap"]["name"]
    assert config_map == manifest["ConfigMap"]["metadata"]["name"]
    assert Path(job_file).name in manifest["ConfigMap"]["data"]

    containerfile = (CLUSTER / "Containerfile").read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", containerfile, re.M).group(1)
    assert cluster["rayVersion"] == ray_version  # the Ray the image installs


def test_rayjob_job_file_is_valid_and_fits_the_cluster(manifest):
    from workflows.jobs.spec import parse_job_spec

    spec = parse_job_spec(manifest["ConfigMap"]["data"]["job.yaml"], source="rayjob.yaml ConfigMap")
    r = spec.resources
    cluster = manifest["RayJob"]["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = group["replicas"] * container["resources"]["limits"]["nvidia.com/gpu"]
    cpus = group["replicas"] * int(container["resources"]["limits"]["cpu"])
    assert str(r.device) == "cuda" and 0 < r.gpus_per_worker < 1
    assert r.workers * r.gpus_per_worker <= gpus and r.workers * r.threads_per_worker <= cpus
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # model actors go to the GPU workers


# ---------------------------------------------------------------------------------------------- Containerfile
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word, rest.strip()))
    assert not pending, "a continuation line ends the file"
    return out


def test_containerfile_instructions_and_install_order():
    text = (CLUSTER / "Containerfile").read_text()
    steps = _instructions(text)
    assert {word for word, _ in steps} <= DOCKERFILE_INSTRUCTIONS, {w for w, _ in steps} - DOCKERFILE_INSTRUCTIONS
    assert all(word.isupper() for word, _ in steps)
    assert steps[0] == ("FROM", "python:3.11-slim")
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG")
    setup = (ROOT / ".ci" / "setup.sh").read_text()
    assert args["TORCH_VERSION"] == re.search(r"pip install --quiet torch==(\S+)", setup).group(1)
    assert args["TORCH_VARIANT"] == "cpu"  # CPU unless the build asks for CUDA

    runs = [rest for word, rest in steps if word == "RUN"]
    torch_at = next(i for i, run in enumerate(runs) if '"torch==${TORCH_VERSION}"' in run)
    project_at = next(i for i, run in enumerate(runs) if "/opt/ionscreen-src" in run and "pip install" in run)
    assert torch_at < project_at
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in runs[torch_at]
    assert "--constraint" in runs[project_at]  # the project's torch>=2.6 cannot replace the chosen build
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("COPY", ". /opt/ionscreen-src") in steps
    assert (CLUSTER / "Containerfile.dockerignore").read_text().count(".venv") == 1


# ---------------------------------------------------------------------------------------------- SLURM
SBATCH = CLUSTER / "ionscreen.sbatch"


def test_sbatch_script_parses_and_its_directives_come_first():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = SBATCH.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert directives and max(directives) < first_command  # sbatch stops reading #SBATCH at the first command


def test_sbatch_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", "--shell=bash", str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------- GPUs per worker
JOB = """\
name: gpus
model: bundled:lipscl-demo
working_ion: Li
candidates:
  - library: Li2S
transport:
  preset: quick
resources:
"""


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1, 2, 64])
def test_gpus_per_worker_takes_fractions_and_whole_gpus(gpus):
    from workflows.jobs.spec import parse_job_spec

    spec = parse_job_spec(JOB + f"  workers: 4\n  gpus_per_worker: {gpus}\n  device: cuda\n")
    assert spec.resources.gpus_per_worker == gpus


@pytest.mark.parametrize("resources, words", [
    ("gpus_per_worker: 1.5", "whole number"),
    ("gpus_per_worker: 65", "less than or equal to 64"),
    ("gpus_per_worker: -0.25", "greater than or equal to 0"),
    ("gpus_per_worker: half", "number"),
    ("{gpus_per_worker: 0.25, device: cpu}", "device: cpu"),
])
def test_gpus_per_worker_errors_name_the_field(resources, words):
    from workflows.jobs.spec import JobSpecError, parse_job_spec

    block = f"resources: {resources}\n" if resources.startswith("{") else f"resources:\n  {resources}\n"
    text = JOB.replace("resources:\n", block)
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, source="job.yaml")
    (problem,) = info.value.problems
    assert problem.path == "resources.gpus_per_worker", str(info.value)
    assert words in problem.message, problem.message
