"""CHGNet behind the backend protocol: the pretrained weights that the ``chgnet`` wheel ships (references
``chgnet:0.3.0`` and ``chgnet:r2scan``), with an ASE calculator only, so MD and NEB take the ASE paths.

Why it is here: it is the only universal potential whose weights install with a package on a machine without
internet (89 elements, trained on Materials Project relaxation trajectories), so it is ionscreen's offline
teacher for distillation and its reference for multivalent hosts. On a CPU it runs 413 atom-steps/s (128 atoms,
one thread), 6.6× fewer than the bundled 32×0e MACE in the lean engine (``benchmarks/model_speed.py``); use it to
label and to check, a distilled student to screen.

Trust: the weight files are state dictionaries, read with ``torch.load(weights_only=True)`` (no code runs),
and only when their SHA-256 equals the one recorded here from the chgnet 0.4.2 wheel. CHGNet computes in
float32 whatever dtype is asked; its energies are total energies in eV (MP2020-compatible references), forces
in eV/Å and stresses in eV/Å³ as ASE expects.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import TYPE_CHECKING

from mlip.backends.base import Capability, ModelBackend, PackagedWeights, refuse_uncovered, stamp
from mlip.errors import InputError

if TYPE_CHECKING:
    from mlip.model import LoadedModel, ResolvedModel

CHGNET_VERSION = "0.4.2"

#: Elements of MPtrj, which both weight sets cover: H to Bi and Ac to Pu (Po to Ra never occur in it).
COVERED_ATOMIC_NUMBERS: tuple[int, ...] = tuple(range(1, 84)) + tuple(range(89, 95))

#: The weights inside the chgnet 0.4.2 wheel, with the SHA-256 of each file as the wheel ships it.
WEIGHTS: dict[str, PackagedWeights] = {
    "0.3.0": PackagedWeights(
        "chgnet", CHGNET_VERSION, "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        "d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1",
        "CHGNet 0.3.0, trained on MPtrj (PBE/PBE+U relaxation trajectories of the Materials Project)",
        COVERED_ATOMIC_NUMBERS,
    ),
    "r2scan": PackagedWeights(
        "chgnet", CHGNET_VERSION, "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
        "8eba3db0f35a2788bb3ae22885ad340591e27996f213c6643af522a633b50dad",
        "CHGNet transfer-learned from 0.3.0 to the Materials Project's r2SCAN data",
        COVERED_ATOMIC_NUMBERS,
    ),
}


class ChgnetBackend(ModelBackend):
    family = "chgnet"
    label = "CHGNet"
    capabilities = frozenset({Capability.CALCULATOR})
    weights_only = True

    def packaged_weights(self) -> dict[str, PackagedWeights]:
        return WEIGHTS

    def describe(self, resolved: "ResolvedModel", module) -> "LoadedModel":
        model = _model_from_state(module, resolved)
        return resolved.loaded(
            family=self.family,
            module=model,
            atomic_numbers=COVERED_ATOMIC_NUMBERS,
            n_params=int(model.n_params),
            dtype="float32",
            r_max_A=float(model.graph_converter.atom_graph_cutoff),
            model_class=f"CHGNet {model.version}",
        )

    def calculator(self, loaded: "LoadedModel", *, task, dtype: str, device: str = "auto", **options):
        from mlip.calculators import resolve_device

        if options:
            raise InputError(f"the CHGNet calculator takes no options; got {', '.join(sorted(options))}")
        device = resolve_device(device)
        with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints the device it chose
            calc = _coverage_checked_class()(model=loaded.module, use_device=device, on_isolated_atoms="ignore")
        return stamp(calc, loaded)


def _model_from_state(state, resolved: "ResolvedModel"):
    try:
        from chgnet.model import CHGNet
    except ImportError as err:
        raise InputError(f"{resolved.ref.text} needs the chgnet package: pip install chgnet=={CHGNET_VERSION}") from err
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)
            and {"state_dict", "model_args"} <= set(state["model"])):
        raise InputError(f"{resolved.path} is not a CHGNet checkpoint (no model.state_dict and model.model_args)")
    with contextlib.redirect_stdout(io.StringIO()):
        # As CHGNet.load does for every release after 0.2.0: no bias in the output MLP.
        return CHGNet.from_dict(state["model"], mlp_out_bias=False, version=resolved.ref.name)


@functools.cache
def _coverage_checked_class():
    from ase.calculators.calculator import all_changes
    from chgnet.model.dynamics import CHGNetCalculator

    class CoverageCheckedCHGNetCalculator(CHGNetCalculator):
        """CHGNetCalculator that names uncovered elements, reports float32, and computes energy and forces, and
        the stress only when it is asked for (never magnetic moments)."""

        default_dtype = "float32"  # what NEB provenance records: CHGNet computes in float32
        implemented_properties = (*CHGNetCalculator.implemented_properties, "free_energy")

        def calculate(self, atoms=None, properties=None, system_changes=all_changes, task=None):
            refuse_uncovered(self, atoms)
            if task is None:  # the stress costs a second backward pass: only when it is asked for
                task = "efs" if "stress" in (properties or ()) else "ef"
            return super().calculate(atoms, properties, system_changes, task=task)

    return CoverageCheckedCHGNetCalculator
