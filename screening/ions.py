"""Working ions and their charges — stated, never guessed from electron configurations."""

from __future__ import annotations

from mlip.errors import InputError

#: Formal charge (in units of e) of each working ion ionscreen screens for.
WORKING_ION_CHARGE: dict[str, int] = {
    "Li": 1,
    "Na": 1,
    "K": 1,
    "Ag": 1,
    "Cu": 1,
    "Mg": 2,
    "Zn": 2,
    "Ca": 2,
    "Al": 3,
}


def ion_charge(symbol: str) -> int:
    """Charge of a working ion; unknown ions are an error (pass the charge explicitly instead)."""
    try:
        return WORKING_ION_CHARGE[symbol]
    except KeyError:
        raise InputError(
            f"no stated charge for working ion {symbol!r}; known: "
            f"{', '.join(f'{k}{v}+' for k, v in WORKING_ION_CHARGE.items())}. Pass the charge explicitly."
        ) from None
