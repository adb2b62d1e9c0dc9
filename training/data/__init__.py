"""Import DFT data (VASP, CP2K, extxyz, ASE databases) into validated, de-duplicated, split datasets.

    from training.data import import_files, load_dataset
    report = import_files(["vasprun.xml"], "datasets/mine", config_type="bulk")
    ds = load_dataset("datasets/mine"); ds.write_splits("mace-input/")
"""

from training.data.hashing import split_fraction, structure_hash
from training.data.readers import EnergyKind, Format, RawFrame, ReadOptions, detect_format, read_frames
from training.data.store import (
    ENERGY_KEY,
    FORCES_KEY,
    STRESS_KEY,
    Dataset,
    ImportReport,
    Manifest,
    Split,
    SplitSpec,
    dataset_hash,
    import_files,
    load_dataset,
)
from training.data.validate import ValidationLimits

__all__ = [
    "ENERGY_KEY", "FORCES_KEY", "STRESS_KEY", "Dataset", "EnergyKind", "Format", "ImportReport", "Manifest",
    "RawFrame", "ReadOptions", "Split", "SplitSpec", "ValidationLimits", "dataset_hash", "detect_format",
    "import_files", "load_dataset", "read_frames", "split_fraction", "structure_hash",
]
