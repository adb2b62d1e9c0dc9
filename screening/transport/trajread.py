"""Read existing MD trajectories (ours or AIMD from DFT codes) into frames for the diffusion analysis.

Formats: ionscreen frame logs (directories), extxyz, ASE ``.traj``, VASP XDATCAR and vasprun.xml.
Wrapped coordinates are unwrapped by the minimum-image step between consecutive frames. The time
between frames and the temperature are read from the file when it states them (vasprun POTIM/TEBEG,
``time_fs``/``temperature_K`` in extxyz info, momenta in ``.traj``), else they must be given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import units

from mlip.errors import InputError
from screening.transport.diffusion import unwrap_fractional
from screening.transport.framelog import FrameData, FrameLog
from screening.transport.polyanions import polyanion_rotors


@dataclass
class LoadedTrajectory:
    frames: FrameData
    temperature_K: float
    frame_dt_fs: float
    source: str
    temperature_source: str
    dt_source: str


def _frames_from_positions(
    symbols: list[str], frac: np.ndarray, lattices: np.ndarray, ion: str, frame_dt_fs: float,
    temps: np.ndarray | None, energies: np.ndarray | None,
) -> FrameData:
    symbols_arr = np.array(symbols)
    mobile = np.flatnonzero(symbols_arr == ion)
    framework = np.flatnonzero(symbols_arr != ion)
    if len(mobile) == 0:
        raise InputError(f"trajectory has no {ion} atoms (species: {', '.join(sorted(set(symbols)))})")
    cart = unwrap_fractional(frac, lattices)
    n = cart.shape[0]
    centroid = cart[:, framework].mean(axis=1) if len(framework) else np.zeros((n, 3))
    fw_species = sorted(set(symbols_arr[framework]))
    fw_msd = np.zeros((n, len(fw_species)))
    if len(framework):
        disp = cart[:, framework] - cart[0, framework][None] - (centroid - centroid[0])[:, None, :]
        sq = (disp**2).sum(axis=-1)
        for k, s in enumerate(fw_species):
            fw_msd[:, k] = sq[:, symbols_arr[framework] == s].mean(axis=1)
    lat = lattices if lattices.ndim == 3 else lattices[None]
    rotors = polyanion_rotors(symbols_arr[framework], cart[0, framework], lat[0]) if len(framework) else {}
    volume = float(np.mean([abs(np.linalg.det(m)) for m in lat]))
    nan = np.full(n, np.nan)
    return FrameData(
        meta={"mobile_symbol": ion, "mobile_indices": mobile.tolist(), "framework_indices": framework.tolist(),
              "framework_species": fw_species, "framework_rotors": rotors, "volume_A3": volume, "symbols": list(symbols)},
        times_fs=np.arange(n) * frame_dt_fs,
        temperature_K=temps if temps is not None else nan,
        epot_eV=energies if energies is not None else nan,
        ekin_eV=nan.copy(),
        framework_centroid_A=centroid,
        framework_msd_A2=fw_msd,
        min_distance_A=nan.copy(),
        mobile_A=cart[:, mobile],
    )


def _pick(value_from_file, given, name: str, path: Path, unit: str):
    if given is not None:
        return float(given), "command line"
    if value_from_file is not None:
        return float(value_from_file), "file"
    raise InputError(f"{path} does not state the {name}; pass --{name.replace(' ', '-')}-{unit}")


def is_vasprun(path: str | Path) -> bool:
    """Whether ``path`` is named like a VASP vasprun.xml (read with pymatgen, not ASE's generic readers)."""
    name = Path(path).name.lower()
    return name.endswith(".xml") or name.startswith("vasprun")


def load_trajectory(path: str | Path, ion: str, *, temperature_K: float | None = None, timestep_fs: float | None = None) -> LoadedTrajectory:
    """Read ``path`` and return frames for ``ion``. ``timestep_fs`` is the time between consecutive frames."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"trajectory {path} does not exist")
    if temperature_K is not None and temperature_K <= 0:
        raise InputError(f"temperature must be positive, got {temperature_K} K")
    if timestep_fs is not None and timestep_fs <= 0:
        raise InputError(f"time between frames must be positive, got {timestep_fs} fs")

    if path.is_dir():
        if not FrameLog.exists(path):
            raise InputError(f"{path} is a directory but not an ionscreen frame log")
        data = FrameLog(path).read()
        if data.meta["mobile_symbol"] != ion:
            raise InputError(f"{path} tracks {data.meta['mobile_symbol']}, not {ion}")
        t, ts = _pick(data.meta.get("temperature_K"), temperature_K, "temperature", path, "K")
        dt = float(data.times_fs[1] - data.times_fs[0]) if data.n_frames > 1 else None
        dt, ds = _pick(dt, timestep_fs, "timestep", path, "fs")
        if timestep_fs is not None:
            data.times_fs = np.arange(data.n_frames) * dt
        return LoadedTrajectory(data, t, dt, str(path), ts, ds)

    name = path.name.lower()
    try:
        if is_vasprun(path):
            return _from_vasprun(path, ion, temperature_K, timestep_fs)
        import ase.io

        fmt = "vasp-xdatcar" if "xdatcar" in name else None
        images = ase.io.read(str(path), index=":", format=fmt)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"could not read a trajectory from {path}: {err}") from err
    if len(images) < 10:
        raise InputError(f"{path} holds {len(images)} frames; a diffusion analysis needs many more")
    symbols = images[0].get_chemical_symbols()
    if any(im.get_chemical_symbols() != symbols for im in images):
        raise InputError(f"{path}: the atoms change between frames")
    frac = np.array([im.get_scaled_positions(wrap=False) for im in images])
    lattices = np.array([im.cell.array for im in images])
    info = images[0].info
    file_dt = None
    if "time_fs" in info and len(images) > 1 and "time_fs" in images[1].info:
        file_dt = float(images[1].info["time_fs"]) - float(info["time_fs"])
    dt, ds = _pick(file_dt, timestep_fs, "timestep", path, "fs")
    temps = None
    file_t = info.get("temperature_K")
    if all(im.has("momenta") for im in images):
        temps = np.array([im.get_kinetic_energy() * 2 / (3 * len(im) * units.kB) for im in images])
        file_t = file_t if file_t is not None else float(np.mean(temps))
    t, ts = _pick(file_t, temperature_K, "temperature", path, "K")
    energies = None
    try:
        energies = np.array([im.get_potential_energy() for im in images])
    except Exception:
        pass
    frames = _frames_from_positions(symbols, frac, lattices, ion, dt, temps, energies)
    return LoadedTrajectory(frames, t, dt, str(path), ts, ds)


def _from_vasprun(path: Path, ion: str, temperature_K, timestep_fs) -> LoadedTrajectory:
    from pymatgen.io.vasp import Vasprun

    try:
        run = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    except Exception as err:
        raise InputError(f"{path} is not a readable vasprun.xml (cut off or corrupt?): {err}") from err
    structures = run.structures
    if len(structures) < 10:
        raise InputError(f"{path} holds {len(structures)} ionic steps; a diffusion analysis needs many more")
    params = run.parameters
    potim = params.get("POTIM")
    tebeg, teend = params.get("TEBEG"), params.get("TEEND", params.get("TEBEG"))
    file_t = tebeg if tebeg is not None and teend is not None and abs(tebeg - teend) < 1e-6 else None
    dt, ds = _pick(potim, timestep_fs, "timestep", path, "fs")
    t, ts = _pick(file_t, temperature_K, "temperature", path, "K")
    symbols = [site.specie.symbol for site in structures[0]]
    frac = np.array([s.frac_coords for s in structures])
    lattices = np.array([s.lattice.matrix for s in structures])
    energies = np.array([step.get("e_fr_energy", np.nan) for step in run.ionic_steps])
    frames = _frames_from_positions(symbols, frac, lattices, ion, dt, None, energies)
    return LoadedTrajectory(frames, t, dt, str(path), ts, ds)
