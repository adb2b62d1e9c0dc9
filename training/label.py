"""Label structures for MACE training data, resumably, with a labeller: DFT (CP2K through ASE's CP2K
calculator) or an MLIP teacher (any model ionscreen loads, e.g. ``chgnet:0.3.0``, for distillation).

A labelling run writes one file per structure, keyed by the structure hash, each written atomically, so
a run that is killed and started again continues where it stopped and labels nothing twice. Failures
(SCF not converged, CP2K abort, an element the teacher lacks) are recorded with their error and skipped on
later runs unless asked. A run directory belongs to one labeller (its level of theory: CP2K settings hash, or
the teacher's SHA-256), recorded in ``run.json`` and on every frame; another labeller is refused there.
ASE's CP2K calculator is used as is; this module adds the CP2K input details ASE leaves to a template (OT or
smearing, relative cutoff, spin), the per-frame provenance, and the resumable journal.
"""

from __future__ import annotations

import abc
import enum
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Rydberg
from pydantic import BaseModel, ConfigDict, Field

from mlip.errors import InputError, SimulationFailed
from mlip.util import atomic_write_text, exclusive_or_refuse
from training.data.hashing import structure_hash

DEFAULT_COMMAND = "cp2k_shell"
DEFAULT_DATA_DIR = Path("/usr/share/cp2k")
RUN_FILE = "run.json"
FRAMES_DIR = "frames"
FAILED_DIR = "failed"
WORK_DIR = "work"
COLLECTED_FILE = "labelled.xyz"
FAILED_SUMMARY_FILE = "failed.json"


class Basis(str, enum.Enum):
    """MOLOPT basis sets (short-range variants, which exist for every element we need and converge fast)."""

    SZV = "SZV-MOLOPT-SR-GTH"
    DZVP = "DZVP-MOLOPT-SR-GTH"


class ScfMethod(str, enum.Enum):
    """How the SCF is solved: orbital transformation (insulators, fast) or diagonalisation with smearing."""

    OT = "ot"
    SMEAR = "smear"


class CP2KSettings(BaseModel):
    """Everything that determines a CP2K label. Recorded with every frame; its hash keys a labelling run."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    xc: str = Field("PBE", description="Exchange-correlation functional (CP2K XC_FUNCTIONAL name).")
    pseudopotential: str = Field("GTH-PBE", description="GTH pseudopotential family (GTH_POTENTIALS).")
    basis: Basis = Field(Basis.DZVP, description="MOLOPT basis set, same for every element.")
    basis_file: str = Field("BASIS_MOLOPT", description="CP2K basis set file.")
    potential_file: str = Field("GTH_POTENTIALS", description="CP2K pseudopotential file.")
    cutoff_Ry: float = Field(400.0, gt=0, description="Plane-wave cutoff of the finest grid, Rydberg.")
    rel_cutoff_Ry: float = Field(50.0, gt=0, description="Relative cutoff (Gaussian to grid mapping), Rydberg.")
    scf: ScfMethod = Field(
        ScfMethod.SMEAR, description="SCF solver: diagonalisation with Fermi-Dirac smearing and Broyden mixing "
        "(robust; the default because OT/DIIS stalled on rattled Li6PS5Cl) or OT (cheaper per step for big cells)."
    )
    eps_scf: float = Field(1e-6, gt=0, description="SCF convergence threshold (CP2K EPS_SCF, Hartree-based).")
    max_scf: int = Field(100, gt=0, description="Inner SCF iterations per outer loop (OT) or in total (smear).")
    outer_max_scf: int = Field(10, ge=0, description="Outer SCF loops (OT only).")
    smearing_temperature_K: float = Field(
        300.0, ge=0, description="Fermi-Dirac electronic temperature when scf='smear', kelvin."
    )
    added_mos: int = Field(20, ge=0, description="Extra orbitals per spin for smearing.")
    kpoint_min_length_A: float | None = Field(
        None, gt=0, description="Brillouin-zone sampling: per cell vector i, n_i = ceil(L / |a_i|) Monkhorst-Pack "
        "points, so every direction is sampled as a supercell at least L Å long; None (or 1x1x1) = Gamma only. "
        "Gamma-only labels of Li2S were 0.25 eV/atom off with 8 Å edges and 0.05 eV/atom with 11.4 Å.",
    )

    def kpoint_mesh(self, atoms: Atoms) -> tuple[int, int, int]:
        if self.kpoint_min_length_A is None:
            return (1, 1, 1)
        lengths = atoms.cell.lengths()
        return tuple(max(1, int(np.ceil(self.kpoint_min_length_A / L - 1e-9))) for L in lengths)

    def settings_hash(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def info_fields(self) -> dict[str, object]:
        """Flat ``dft_*`` keys stored in every frame's info (extxyz cannot hold nested dicts)."""
        return {
            "dft_code": "CP2K",
            "dft_xc": self.xc,
            "dft_pseudopotential": self.pseudopotential,
            "dft_basis": self.basis.value,
            "dft_cutoff_Ry": float(self.cutoff_Ry),
            "dft_rel_cutoff_Ry": float(self.rel_cutoff_Ry),
            "dft_scf": self.scf.value,
            "dft_eps_scf": float(self.eps_scf),
            "dft_kpoint_min_length_A": -1.0 if self.kpoint_min_length_A is None else float(self.kpoint_min_length_A),
            "dft_settings_hash": self.settings_hash(),
        }


# ---------------------------------------------------------------------------------------------------
# CP2K facts: version, valence electrons, spin state


@functools.cache
def cp2k_version(command: str = DEFAULT_COMMAND) -> str:
    """'CP2K 2023.1 (git:b888bd8)' from ``<command> --version``; InputError if CP2K cannot be started."""
    argv = shlex.split(command)
    try:
        out = subprocess.run(argv + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise InputError(
            f"cannot run CP2K as {command!r}: {err}. Install it (apt-get install cp2k cp2k-data) "
            "or pass --command."
        ) from err
    version = re.search(r"CP2K version\s+(\S+)", out)
    revision = re.search(r"Source code revision\s+(\S+)", out)
    if not version:
        raise InputError(f"{command!r} --version did not print a CP2K version; is it CP2K's shell?")
    return f"CP2K {version.group(1)}" + (f" ({revision.group(1)})" if revision else "")


def cp2k_data_dir() -> Path:
    return Path(os.environ.get("CP2K_DATA_DIR", DEFAULT_DATA_DIR))


@functools.cache
def _valence_table(potential_file: str, family: str) -> dict[str, int]:
    path = Path(potential_file)
    if not path.is_absolute():
        path = cp2k_data_dir() / potential_file
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(
            f"cannot read the CP2K pseudopotential file {path}: {err}. Set CP2K_DATA_DIR or install cp2k-data."
        ) from err
    table: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0][:1].isalpha() or parts[0][0].islower():
            continue
        names = parts[1:]
        if family not in names:
            continue
        for name in names:
            m = re.fullmatch(re.escape(family) + r"-q(\d+)", name)
            if m:
                table.setdefault(parts[0], int(m.group(1)))
    return table


def valence_electrons(symbols: Iterable[str], settings: CP2KSettings) -> int:
    """Number of valence electrons of the neutral structure with the settings' pseudopotentials."""
    table = _valence_table(settings.potential_file, settings.pseudopotential)
    missing = sorted({s for s in symbols if s not in table})
    if missing:
        raise InputError(
            f"no {settings.pseudopotential} pseudopotential for {', '.join(missing)} in "
            f"{settings.potential_file}; choose another --pseudopotential family."
        )
    return sum(table[s] for s in symbols)


def spin_state(atoms: Atoms, settings: CP2KSettings) -> tuple[int, int, bool]:
    """(charge, multiplicity, unrestricted) for ``atoms``.

    Charge and multiplicity come from ``atoms.info['charge'|'multiplicity']`` when present. Otherwise
    the structure is neutral and the lowest multiplicity compatible with its electron count is used:
    singlet (restricted) for even counts, doublet (unrestricted) for odd, because CP2K aborts on an odd
    electron count in a restricted calculation.
    """
    charge = int(atoms.info.get("charge", 0))
    n_el = valence_electrons(atoms.get_chemical_symbols(), settings) - charge
    if n_el <= 0:
        raise InputError(f"charge {charge} leaves {n_el} electrons")
    multiplicity = atoms.info.get("multiplicity")
    if multiplicity is None:
        multiplicity = 1 if n_el % 2 == 0 else 2
    multiplicity = int(multiplicity)
    if (n_el + multiplicity - 1) % 2 != 0:
        raise InputError(
            f"multiplicity {multiplicity} is impossible with {n_el} electrons (charge {charge}); "
            "an even electron count needs an odd multiplicity and vice versa."
        )
    return charge, multiplicity, multiplicity != 1


# ---------------------------------------------------------------------------------------------------
# One structure


def _input_template(settings: CP2KSettings, mesh: tuple[int, int, int] = (1, 1, 1)) -> str:
    kpoints = ""
    if mesh != (1, 1, 1):
        if settings.scf is ScfMethod.OT:
            raise InputError("k-points need diagonalisation: use scf='smear' (--scf smear) with --kpoint-min-length-A")
        # no crystal symmetry (rattled frames have none); time reversal halves the mesh
        kpoints = f"""
    &KPOINTS
      SCHEME MONKHORST-PACK {mesh[0]} {mesh[1]} {mesh[2]}
      SYMMETRY F
      FULL_GRID F
    &END KPOINTS"""
    common = f"""
&FORCE_EVAL
  &DFT{kpoints}
    &MGRID
      REL_CUTOFF [Ry] {settings.rel_cutoff_Ry}
      NGRIDS 4
    &END MGRID
    &QS
      EPS_DEFAULT 1.0E-12
    &END QS
    &SCF
      EPS_SCF {settings.eps_scf:.3E}
      SCF_GUESS ATOMIC
{{scf_body}}
    &END SCF
  &END DFT
&END FORCE_EVAL
"""
    if settings.scf is ScfMethod.OT:
        body = f"""      &OT ON
        MINIMIZER DIIS
        PRECONDITIONER FULL_SINGLE_INVERSE
      &END OT
      &OUTER_SCF ON
        EPS_SCF {settings.eps_scf:.3E}
        MAX_SCF {settings.outer_max_scf}
      &END OUTER_SCF"""
    else:
        body = f"""      ADDED_MOS {settings.added_mos}
      &DIAGONALIZATION ON
        ALGORITHM STANDARD
      &END DIAGONALIZATION
      &MIXING ON
        METHOD BROYDEN_MIXING
        ALPHA 0.3
        NBROYDEN 8
      &END MIXING
      &SMEAR ON
        METHOD FERMI_DIRAC
        ELECTRONIC_TEMPERATURE [K] {settings.smearing_temperature_K}
      &END SMEAR"""
    return common.replace("{scf_body}", body)


class LabelResult(BaseModel):
    """What the labeller returned for one structure, in ASE units."""

    energy_eV: float = Field(description="Total energy, eV.")
    forces_eV_A: list[list[float]] = Field(description="Forces, eV/Å, one row per atom.")
    stress_eV_A3: list[float] = Field(description="Stress, ASE Voigt order (xx yy zz yz xz xy), eV/Å³.")
    scf_steps: int | None = Field(None, description="SCF iterations used (from CP2K's output), if found.")
    wall_s: float = Field(description="Wall time of the evaluation, seconds.")
    charge: int = 0
    multiplicity: int | None = Field(None, description="Spin multiplicity (CP2K); None for an MLIP teacher.")
    kpoint_mesh: tuple[int, int, int] = Field((1, 1, 1), description="Monkhorst-Pack mesh used; 1x1x1 = Gamma.")


_SCF_STEPS = re.compile(r"SCF run converged in\s+(\d+)\s+steps")
_OUTER_STEPS = re.compile(r"outer SCF loop converged in\s+\d+\s+iterations or\s+(\d+)\s+steps")
_NOT_CONVERGED = re.compile(r"SCF run NOT converged|outer SCF loop FAILED to converge", re.IGNORECASE)


def scf_failures(output: str) -> int:
    """How many SCF runs in a CP2K output did not converge (0 for a clean run)."""
    return len(_NOT_CONVERGED.findall(output))


def _scf_steps(output: str) -> int | None:
    outer = _OUTER_STEPS.findall(output)
    if outer:
        return int(outer[-1])
    inner = _SCF_STEPS.findall(output)
    return int(inner[-1]) if inner else None


def _shell_command(command: str, workdir: Path) -> str:
    """CP2K started inside ``workdir`` (CP2K truncates project/file names past 80 characters, so ASE's
    label must stay a short relative name) and, where possible, so that it dies with us: a SIGKILLed
    labeller must not leave CP2K computing on."""
    prefix = f"cd {shlex.quote(str(workdir))} && exec "
    if shutil.which("setpriv"):
        return prefix + f"setpriv --pdeathsig KILL {command}"
    return prefix + command


def cp2k_calculator(atoms: Atoms, settings: CP2KSettings, workdir: Path, *, command: str = DEFAULT_COMMAND,
                    stress: bool = True):
    """ASE's CP2K calculator for ``atoms`` with ``settings`` (spin state and k-point mesh from ``atoms``),
    running in ``workdir``. One CP2K shell serves every later call, each SCF starting from the previous
    wavefunction: what a relaxation wants, and what labelling avoids by making one per structure.
    ``stress=False`` leaves out the analytical stress (relaxations at fixed cell). Returns
    ``(calculator, (charge, multiplicity), mesh)``; the caller closes the calculator."""
    from ase.calculators.cp2k import CP2K

    if not atoms.pbc.all():
        raise InputError("only fully periodic structures are labelled (pbc=True in all directions)")
    charge, multiplicity, uks = spin_state(atoms, settings)
    mesh = settings.kpoint_mesh(atoms)
    workdir.mkdir(parents=True, exist_ok=True)
    calc = CP2K(
        command=_shell_command(command, workdir.resolve()),
        label="cp2k",
        xc=settings.xc,
        basis_set=settings.basis.value,
        basis_set_file=settings.basis_file,
        potential_file=settings.potential_file,
        pseudo_potential=settings.pseudopotential,
        cutoff=settings.cutoff_Ry * Rydberg,
        max_scf=settings.max_scf,
        charge=charge,
        multiplicity=multiplicity,
        uks=uks,
        stress_tensor=stress,
        print_level="LOW",
        inp=_input_template(settings, mesh),
    )
    return calc, (charge, multiplicity), mesh


def label_structure(
    atoms: Atoms, settings: CP2KSettings, workdir: Path, *, command: str = DEFAULT_COMMAND
) -> LabelResult:
    """Run CP2K single point (energy, forces, analytical stress) on ``atoms`` in ``workdir``.

    A fresh CP2K shell per structure: results do not depend on which structure came before (no
    wavefunction carried over), and a crash cannot poison the next structure.
    Raises SimulationFailed when CP2K aborts or the SCF does not converge.
    """
    out_path = workdir / "cp2k.out"
    t0 = time.perf_counter()
    calc = None
    try:
        calc, (charge, multiplicity), mesh = cp2k_calculator(atoms, settings, workdir, command=command)
        work = atoms.copy()
        work.calc = calc
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
        stress = np.array(work.get_stress(voigt=True), dtype=float)
    except (InputError, SimulationFailed):
        raise
    except Exception as err:  # CP2K aborts surface as assorted errors from the shell pipe
        tail = _tail(out_path)
        raise SimulationFailed(f"CP2K failed: {type(err).__name__}: {err}\n--- end of CP2K output ---\n{tail}") from err
    finally:
        if calc is not None:
            calc.close()
    wall = time.perf_counter() - t0
    output = out_path.read_text(errors="replace") if out_path.exists() else ""
    if scf_failures(output):
        raise SimulationFailed("SCF did not converge (CP2K printed 'NOT converged')\n" + _tail(out_path))
    if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
        raise SimulationFailed("CP2K returned non-finite energy, forces or stress")
    return LabelResult(
        energy_eV=energy,
        forces_eV_A=forces.tolist(),
        stress_eV_A3=stress.tolist(),
        scf_steps=_scf_steps(output),
        wall_s=wall,
        charge=charge,
        multiplicity=multiplicity,
        kpoint_mesh=mesh,
    )


def _tail(path: Path, n_lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n_lines:])
    except OSError:
        return "(no CP2K output)"


# ---------------------------------------------------------------------------------------------------
# Labellers: what computes the labels, and its identity (the level of theory)


def cp2k_level_of_theory(xc: str, pseudopotential: str, basis: str, cutoff_Ry: float, rel_cutoff_Ry: float) -> str:
    return f"CP2K {xc}/{pseudopotential}/{basis}, cutoff {float(cutoff_Ry):g}/{float(rel_cutoff_Ry):g} Ry"


class Labeller(abc.ABC):
    """Computes energy, forces and stress of one structure, and says who it is.

    ``identity_hash`` keys a run directory (labels of two identities never share one), ``level_of_theory`` goes
    on every frame (datasets refuse to mix levels silently), ``record`` is written to ``run.json``."""

    kind: str  # "cp2k" or "teacher"

    @property
    @abc.abstractmethod
    def identity_hash(self) -> str: ...

    @property
    @abc.abstractmethod
    def level_of_theory(self) -> str: ...

    @property
    @abc.abstractmethod
    def version(self) -> str: ...  # the code that computes the labels (CP2K release, ionscreen + family)

    @abc.abstractmethod
    def record(self) -> dict: ...

    @abc.abstractmethod
    def label(self, atoms: Atoms, workdir: Path) -> LabelResult: ...

    @abc.abstractmethod
    def frame_info(self, result: LabelResult) -> dict[str, object]:
        """Flat provenance keys stored on each labelled frame (extxyz cannot hold nested dicts)."""

    def refusal(self, old: dict, out_dir: Path) -> str:
        return (f"{out_dir} holds labels made by {old.get('level_of_theory') or old.get('settings_hash')}; this run "
                f"labels with {self.level_of_theory}. Mixing levels of theory in one run would give an inconsistent "
                "dataset: use another --out.")


class Cp2kLabeller(Labeller):
    """DFT with CP2K (one fresh ``cp2k_shell`` per structure)."""

    kind = "cp2k"

    def __init__(self, settings: CP2KSettings, command: str = DEFAULT_COMMAND):
        self.settings = settings
        self.command = command

    @property
    def identity_hash(self) -> str:
        return self.settings.settings_hash()

    @property
    def level_of_theory(self) -> str:
        """The physics (functional, pseudopotentials, basis, grids), not the solver: E0s of isolated atoms
        solved with OT belong with bulk frames solved with smearing."""
        return cp2k_level_of_theory(self.settings.xc, self.settings.pseudopotential, self.settings.basis.value,
                                    self.settings.cutoff_Ry, self.settings.rel_cutoff_Ry)

    @property
    def version(self) -> str:
        return cp2k_version(self.command)

    def record(self) -> dict:
        return {"labeller": self.kind, "settings": self.settings.model_dump(mode="json"),
                "settings_hash": self.settings.settings_hash(), "cp2k_version": self.version,
                "level_of_theory": self.level_of_theory}

    def label(self, atoms: Atoms, workdir: Path) -> LabelResult:
        return label_structure(atoms, self.settings, workdir, command=self.command)

    def frame_info(self, result: LabelResult) -> dict[str, object]:
        return {
            **self.settings.info_fields(),
            "dft_version": self.version,
            "charge": result.charge,
            "multiplicity": result.multiplicity,
            "dft_kpoints": "gamma" if result.kpoint_mesh == (1, 1, 1) else "x".join(map(str, result.kpoint_mesh)),
            "dft_scf_steps": -1 if result.scf_steps is None else result.scf_steps,
        }

    def refusal(self, old: dict, out_dir: Path) -> str:
        if old.get("labeller", "cp2k") == "cp2k":
            return (f"{out_dir} holds labels made with other CP2K settings (hash {old.get('settings_hash')}, "
                    f"now {self.identity_hash}); mixing them would give an inconsistent dataset. "
                    "Use another --out, or the same settings as before.")
        return super().refusal(old, out_dir)


class TeacherLabeller(Labeller):
    """An MLIP teacher (any trusted model ionscreen loads): single points in float64 where the family allows,
    for distilling a student. Its identity is the model's SHA-256."""

    kind = "teacher"

    def __init__(self, model_ref: str, *, device: str = "cpu", settings=None):
        from mlip.calculators import Task
        from mlip.loader import load_model

        self.model = load_model(model_ref, settings, device=device)
        self.calculator = self.model.calculator(task=Task.SINGLE_POINT, device=device)

    @property
    def identity_hash(self) -> str:
        return self.model.sha256

    @property
    def level_of_theory(self) -> str:
        return f"teacher {self.model.ref} ({self.model.family}) [{self.model.sha256[:16]}]"

    @property
    def version(self) -> str:
        from mlip.version import code_version

        return f"ionscreen {code_version()}"

    def record(self) -> dict:
        return {"labeller": self.kind, "family": self.model.family, "model_ref": self.model.ref,
                "model_sha256": self.model.sha256, "level_of_theory": self.level_of_theory,
                "version": self.version}

    def label(self, atoms: Atoms, workdir: Path) -> LabelResult:
        from mlip.errors import ModelDomainError

        if not atoms.pbc.all():
            raise InputError("only fully periodic structures are labelled (pbc=True in all directions)")
        work = atoms.copy()
        work.calc = self.calculator
        t0 = time.perf_counter()
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces(), dtype=float)
            stress = np.array(work.get_stress(voigt=True), dtype=float)
        except ModelDomainError as err:
            raise InputError(str(err)) from err
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            raise SimulationFailed(f"teacher {self.model.ref} returned non-finite energy, forces or stress")
        return LabelResult(energy_eV=energy, forces_eV_A=forces.tolist(), stress_eV_A3=stress.tolist(),
                           wall_s=time.perf_counter() - t0, charge=int(atoms.info.get("charge", 0)))

    def frame_info(self, result: LabelResult) -> dict[str, object]:
        return {"teacher_family": self.model.family, "teacher_model_ref": self.model.ref,
                "teacher_model_sha256": self.model.sha256, "label_version": self.version}


# ---------------------------------------------------------------------------------------------------
# A resumable run over many structures


class LabelRunSummary(BaseModel):
    """What a labelling run did."""

    out_dir: str
    n_structures: int = Field(description="Distinct structures in the input (duplicates counted once).")
    n_duplicates_in_input: int
    n_labelled_now: int
    n_already_labelled: int = Field(description="Found done from an earlier run and not recomputed.")
    n_failed_now: int
    n_failed_before: int = Field(description="Failed in an earlier run and skipped (retry with --retry-failed).")
    n_remaining: int = Field(description="Not yet attempted (the run was limited or interrupted).")
    mean_wall_s: float | None = Field(None, description="Mean wall time per structure labelled now, s.")
    labeller: str = Field(description="cp2k or teacher.")
    level_of_theory: str = Field(description="The labeller's identity, as recorded on every frame.")
    settings_hash: str = Field(description="Key of the run: CP2K settings hash, or the teacher's SHA-256.")
    version: str = Field(description="The labelling code (CP2K release, or ionscreen's version for a teacher).")
    collected_file: str | None = None


def _atomic_write_atoms(path: Path, frames: Sequence[Atoms]) -> None:
    import io

    from ase.io import write

    buf = io.StringIO()
    write(buf, list(frames), format="extxyz")
    atomic_write_text(path, buf.getvalue())


def _exclusive(out_dir: Path):
    return exclusive_or_refuse(
        out_dir / ".lock", f"another labelling run is using {out_dir} (lock held); wait for it or use another --out"
    )


def _check_run_file(out_dir: Path, labeller: Labeller) -> None:
    path = out_dir / RUN_FILE
    record = {**labeller.record(), "identity_hash": labeller.identity_hash}
    if path.exists():
        old = json.loads(path.read_text())
        old_hash = old.get("identity_hash", old.get("settings_hash"))  # runs before labellers keyed on settings
        if old_hash != labeller.identity_hash:
            raise InputError(labeller.refusal(old, out_dir))
        before = old.get("cp2k_version", old.get("version"))
        if before == labeller.version:
            return
        versions = old.get("versions_seen", old.get("cp2k_versions_seen", [before]))
        record["versions_seen"] = sorted({*versions, labeller.version})
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def labelled_frame(atoms: Atoms, result: LabelResult, labeller: Labeller, key: str) -> Atoms:
    """``atoms`` with the labels stored under mace-torch's default keys, plus the labeller's provenance."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    keep = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, np.integer, np.floating))}
    frame.info.update(keep)
    frame.info["REF_energy"] = result.energy_eV
    frame.info["REF_stress"] = np.array(result.stress_eV_A3)
    frame.arrays["REF_forces"] = np.array(result.forces_eV_A)
    frame.info.update({k: v for k, v in labeller.frame_info(result).items() if v is not None})
    frame.info["labeller"] = labeller.kind
    frame.info["level_of_theory"] = labeller.level_of_theory
    frame.info["label_wall_s"] = round(result.wall_s, 3)
    frame.info["structure_hash"] = key
    return frame


def read_structures(path: Path) -> list[Atoms]:
    from ase.io import read

    try:
        frames = read(str(path), index=":")
    except Exception as err:
        raise InputError(f"cannot read structures from {path}: {err}") from err
    if not frames:
        raise InputError(f"{path} holds no structures")
    for i, atoms in enumerate(frames):
        atoms.info.setdefault("source_file", path.name)
        atoms.info.setdefault("source_frame", i)
    return frames


def label_key(atoms: Atoms) -> str:
    """Structure hash, extended by charge/multiplicity when given (they change the label)."""
    key = structure_hash(atoms)
    extra = [f"{k}={atoms.info[k]}" for k in ("charge", "multiplicity") if k in atoms.info]
    if extra:
        key = hashlib.sha256((key + ";" + ";".join(extra)).encode()).hexdigest()
    return key


def run_labelling(
    structures: Sequence[Atoms],
    out_dir: Path,
    labeller: Labeller | CP2KSettings,
    *,
    command: str = DEFAULT_COMMAND,
    retry_failed: bool = False,
    max_structures: int | None = None,
    progress: Callable[[str], None] | None = None,
    keep_workdirs: bool = False,
) -> LabelRunSummary:
    """Label every structure not labelled yet in ``out_dir``; resumable and safe to kill at any time.

    ``labeller`` is a :class:`Labeller`; CP2K settings alone mean a :class:`Cp2kLabeller` run with ``command``.
    Layout of ``out_dir``: ``run.json`` (the labeller's identity and version), ``frames/<hash>.extxyz`` (one
    labelled frame each, written atomically when its calculation ends), ``failed/<hash>.json`` (error of a failed
    structure), ``labelled.xyz`` (all labelled frames in input order, rewritten at the end of each run).
    """
    if isinstance(labeller, CP2KSettings):
        labeller = Cp2kLabeller(labeller, command)
    out_dir = Path(out_dir)
    say = progress or (lambda msg: None)
    version = labeller.version
    with _exclusive(out_dir):
        _check_run_file(out_dir, labeller)
        frames_dir, failed_dir = out_dir / FRAMES_DIR, out_dir / FAILED_DIR
        frames_dir.mkdir(exist_ok=True)
        failed_dir.mkdir(exist_ok=True)
        for d in (frames_dir, failed_dir):  # half-written files of a killed run (never renamed into place)
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        seen: set[str] = set()
        todo: list[tuple[str, Atoms]] = []
        n_done = n_failed_before = n_dupes = 0
        for atoms in structures:
            key = label_key(atoms)
            if key in seen:
                n_dupes += 1
                continue
            seen.add(key)
            if (frames_dir / f"{key}.extxyz").exists():
                n_done += 1
            elif (failed_dir / f"{key}.json").exists() and not retry_failed:
                n_failed_before += 1
            else:
                todo.append((key, atoms))
        say(f"{len(seen)} structures: {n_done} already labelled, {n_failed_before} failed before (skipped), "
            f"{len(todo)} to label; {labeller.level_of_theory}, {version}")
        limit = len(todo) if max_structures is None else min(max_structures, len(todo))
        walls: list[float] = []
        n_new = n_fail_now = 0
        t_start = time.perf_counter()
        for i, (key, atoms) in enumerate(todo[:limit]):
            workdir = out_dir / WORK_DIR / f"{key[:16]}-{os.getpid()}"
            try:
                result = labeller.label(atoms, workdir)
            except (SimulationFailed, InputError) as err:
                n_fail_now += 1
                record = {"structure_hash": key, "error": str(err), "n_atoms": len(atoms),
                          "formula": atoms.get_chemical_formula(), "info": _jsonable(atoms.info),
                          "settings_hash": labeller.identity_hash, "time": time.time(),
                          "traceback": traceback.format_exc(limit=3)}
                atomic_write_text(failed_dir / f"{key}.json", json.dumps(record, indent=2) + "\n")
                say(f"[{i + 1}/{limit}] FAILED {key[:12]} {atoms.get_chemical_formula()}: "
                    f"{str(err).splitlines()[0]}")
                continue
            finally:
                if not keep_workdirs and workdir.exists():
                    shutil.rmtree(workdir, ignore_errors=True)
            frame = labelled_frame(atoms, result, labeller, key)
            _atomic_write_atoms(frames_dir / f"{key}.extxyz", [frame])
            (failed_dir / f"{key}.json").unlink(missing_ok=True)
            n_new += 1
            walls.append(result.wall_s)
            fmax = float(np.linalg.norm(np.array(result.forces_eV_A), axis=1).max())
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (i + 1) * (limit - i - 1)
            say(f"[{i + 1}/{limit}] {key[:12]} {atoms.get_chemical_formula():>14} n={len(atoms):3d} "
                f"E/atom={result.energy_eV / len(atoms):10.4f} eV  |F|max={fmax:6.3f} eV/A  "
                f"{'' if result.scf_steps is None else f'scf={result.scf_steps}  '}{result.wall_s:6.1f} s  "
                f"ETA {eta / 60:6.1f} min")
        for stale in (out_dir / WORK_DIR).glob("*"):  # leftovers of killed attempts
            if not keep_workdirs:
                shutil.rmtree(stale, ignore_errors=True)
        collected = collect(out_dir, structures)
    return LabelRunSummary(
        out_dir=str(out_dir),
        n_structures=len(seen),
        n_duplicates_in_input=n_dupes,
        n_labelled_now=n_new,
        n_already_labelled=n_done,
        n_failed_now=n_fail_now,
        n_failed_before=n_failed_before,
        n_remaining=len(todo) - limit,
        mean_wall_s=float(np.mean(walls)) if walls else None,
        labeller=labeller.kind,
        level_of_theory=labeller.level_of_theory,
        settings_hash=labeller.identity_hash,
        version=version,
        collected_file=str(collected) if collected else None,
    )


def _jsonable(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
        elif isinstance(v, (np.integer, np.floating)):
            out[k] = v.item()
    return out


def collect(out_dir: Path, structures: Sequence[Atoms] | None = None) -> Path | None:
    """Write ``labelled.xyz``: every labelled frame in ``out_dir``, in input order when the input is given.

    Frames in ``out_dir`` that are not in ``structures`` (from an earlier input) are appended after,
    sorted by hash, so nothing labelled is ever left out.
    """
    from ase.io import read

    out_dir = Path(out_dir)
    files = {p.stem: p for p in (out_dir / FRAMES_DIR).glob("*.extxyz")}
    if not files:
        return None
    order: list[str] = []
    if structures is not None:
        for atoms in structures:
            key = label_key(atoms)
            if key in files and key not in order:
                order.append(key)
    order += sorted(set(files) - set(order))
    frames = [read(str(files[k]), index=0) for k in order]
    target = out_dir / COLLECTED_FILE
    _atomic_write_atoms(target, frames)
    failures = [json.loads(p.read_text()) for p in sorted((out_dir / FAILED_DIR).glob("*.json"))]
    atomic_write_text(out_dir / FAILED_SUMMARY_FILE, json.dumps(
        [{k: f.get(k) for k in ("structure_hash", "formula", "n_atoms", "error")} for f in failures], indent=2
    ) + "\n")
    return target
