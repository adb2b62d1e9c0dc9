"""The SevenNet worker: one process that loads one SevenNet checkpoint and answers energy, force and stress requests.

Run by :mod:`mlip.backends.sevennet`, never imported by ionscreen: SevenNet needs e3nn >= 0.5, MACE's files need
e3nn 0.4.4, and one interpreter holds one e3nn. This script runs in the same Python, with the SevenNet directory
(sevenn, e3nn 0.5, torch_geometric and friends) ahead of everything else on ``sys.path``, and imports nothing of
ionscreen, so MACE's e3nn is never loaded here and SevenNet's never in ionscreen's processes.

Protocol: one JSON object per line on stdin, one reply per line on the stdout it was started with (whatever the
libraries print goes to stderr). The first request must be ``load``::

    {"op": "load", "checkpoint": PATH, "sha256": HEX, "device": "cpu", "threads": 2}
    -> {"ok": true, "type_map": [Z, ...], "cutoff_A": 5.0, "n_params": 842440, "sevenn": "0.13.0", "e3nn": "0.5.9"}
    {"op": "calc", "numbers": [...], "positions": [[x, y, z], ...], "cell": [[...], ...], "pbc": [true, ...]}
    -> {"ok": true, "energy_eV": E, "forces_eV_A": [[...], ...], "stress_eV_A3": [6 Voigt, ASE sign]}

Any failure answers ``{"ok": false, "error": "..."}`` and the worker goes on (a load failure ends it). The
checkpoint's bytes are hashed and compared with ``sha256`` before they are unpickled, from a private copy of those
same bytes, so the file that was checked is the file that is loaded.
"""

import hashlib
import json
import os
import sys
import tempfile
import traceback


def _reply(out, payload) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def _load(request):
    import torch

    threads = int(request.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    with open(request["checkpoint"], "rb") as fh:
        data = fh.read()
    sha = hashlib.sha256(data).hexdigest()
    if sha != request["sha256"]:
        raise ValueError(f"{request['checkpoint']} has SHA-256 {sha}, expected {request['sha256']}; nothing was loaded")
    import e3nn
    import sevenn
    from sevenn.calculator import SevenNetCalculator

    with tempfile.TemporaryDirectory(prefix="ionscreen-sevennet-") as tmp:  # mode 0700: only this user reads it
        copy = os.path.join(tmp, "checkpoint.pth")
        with open(copy, "wb") as fh:
            fh.write(data)
        calc = SevenNetCalculator(copy, file_type="checkpoint", device=request.get("device") or "cpu")
    n_params = sum(p.numel() for p in calc.model.parameters())
    type_map = sorted(int(z) for z in calc.type_map)
    return calc, {"ok": True, "type_map": type_map, "cutoff_A": float(calc.cutoff), "n_params": int(n_params),
                  "sevenn": getattr(sevenn, "__version__", "unknown"), "e3nn": e3nn.__version__}


def _calc(calc, request):
    import numpy as np
    from ase import Atoms

    atoms = Atoms(numbers=request["numbers"], positions=np.asarray(request["positions"], dtype=float),
                  cell=np.asarray(request["cell"], dtype=float), pbc=request["pbc"])
    calc.calculate(atoms, ["energy", "forces", "stress"])
    results = calc.results
    return {"ok": True, "energy_eV": float(results["energy"]),
            "forces_eV_A": np.asarray(results["forces"], dtype=float).tolist(),
            "stress_eV_A3": np.asarray(results["stress"], dtype=float).reshape(-1).tolist()}


def main() -> None:
    out = os.fdopen(os.dup(1), "w")  # the protocol channel
    os.dup2(2, 1)  # library prints go to the log, not into the protocol
    calc = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "load":
                calc, reply = _load(request)
            elif op == "calc":
                if calc is None:
                    raise ValueError("no checkpoint loaded: the first request must be 'load'")
                reply = _calc(calc, request)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as err:  # every failure is answered, with the traceback in the log
            traceback.print_exc(file=sys.stderr)
            _reply(out, {"ok": False, "error": f"{type(err).__name__}: {err}"})
            if calc is None:
                return
            continue
        _reply(out, reply)


if __name__ == "__main__":
    main()
