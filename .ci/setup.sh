# Shared by .ci/test and .ci/demo (sourced, not run): the system programs the real components need, and the
# project's virtual environment. Run from the repository root.

# CP2K with its basis/potential data (DFT labelling), Chromium (the browser tests) and SLURM with munge (the SLURM
# recipe's test), from Debian's packages:
# through apt when this user can (root, or sudo without a password), otherwise a message naming what to install.
ensure_system_packages() {
    local missing=""
    command -v cp2k_shell >/dev/null 2>&1 || missing="$missing cp2k"
    [ -f /usr/share/cp2k/GTH_POTENTIALS ] || missing="$missing cp2k-data"
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    # the one-host SLURM of tests/test_cluster_slurm.py (daemons live in /usr/sbin, often off a user's PATH)
    command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || missing="$missing slurm-wlm"
    command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || missing="$missing munge"
    [ -z "$missing" ] && return 0
    local apt=""
    if [ "$(id -u)" -eq 0 ]; then
        apt="apt-get"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        apt="sudo -n apt-get"
    fi
    if [ -z "$apt" ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ionscreen needs these system packages:$missing" >&2
        echo "install them (Debian/Ubuntu: sudo apt-get install$missing) and run this again" >&2
        return 1
    fi
    echo "installing system packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    $apt update -qq && $apt install -y -qq $missing >/dev/null
}

# The virtual environment in .venv (created if missing), with PyTorch's CPU build first (a bare "torch"
# requirement would pull a multi-GB CUDA build), the project with its dev extra, and SevenNet in a directory of its
# own inside the venv for the sevennet: models' worker (it needs e3nn >= 0.5, mace-torch 0.4.4; see
# mlip/backends/sevennet.py).
ensure_venv() {
    local venv="${IONSCREEN_VENV:-.venv}"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet torch==2.13.0
    python -m pip install --quiet -e '.[dev]'
    python -m pip install --quiet --upgrade --no-deps --target "$(cd "$venv" && pwd)/ionscreen-sevennet" \
        -r mlip/backends/sevennet-requirements.txt
}

# pytest's exit status as the script's, except 5 (no test collected): an empty test run is a failure, not a pass.
refuse_empty_run() {
    if [ "$1" -eq 5 ]; then
        echo "pytest collected no tests (exit 5); an empty test run is a failure, not a pass." >&2
        return 1
    fi
    return "$1"
}
