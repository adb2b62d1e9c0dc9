"""How many real CIFs import and order without hand-given oxidation states: every OBELiX training CIF (or a
seeded sample) through ``screening.candidates.import_file`` as a Li conductor, with which oxidation-state method
was used and why the others failed. Target (issue 17): ≥ 90 % import.

    python benchmarks/obelix_import.py [--cifs ../shared/reference/obelix/cifs] [--sample N] [--timeout-s 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

DEFAULT_CIFS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "obelix" / "cifs"


class _TimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise _TimedOut


def main() -> None:
    from mlip.errors import IonscreenError
    from screening.candidates import import_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifs", type=Path, default=DEFAULT_CIFS)
    parser.add_argument("--sample", type=int, default=None, help="a seeded random sample of this many CIFs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=int, default=120, help="per CIF")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cifs = sorted(args.cifs.glob("*.cif"))
    if args.sample:
        cifs = sorted(random.Random(args.seed).sample(cifs, min(args.sample, len(cifs))))
    signal.signal(signal.SIGALRM, _alarm)
    rows = []
    began = time.perf_counter()
    for cif in cifs:
        start = time.perf_counter()
        signal.alarm(args.timeout_s)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = import_file(cif, working_ion="Li")
            notes = candidate.ordering.notes if candidate.ordering else []
            method = next((n.split(":")[0].removeprefix("oxidation states by ") for n in notes
                           if n.startswith("oxidation states by")), "bond valence")
            row = {"cif": cif.stem, "ok": True, "method": method, "formula": candidate.formula,
                   "n_atoms": len(candidate.structure)}
        except IonscreenError as err:
            row = {"cif": cif.stem, "ok": False, "error": str(err).splitlines()[0][:300]}
        except _TimedOut:
            row = {"cif": cif.stem, "ok": False, "error": f"timed out after {args.timeout_s} s"}
        finally:
            signal.alarm(0)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        if not args.json:
            print(f"{row['cif']:8s} {'ok ' + row['method'] if row['ok'] else 'FAIL ' + row['error']} "
                  f"({row['seconds']} s)", flush=True)
    ok = sum(r["ok"] for r in rows)
    summary = {"n": len(rows), "imported": ok, "share": ok / len(rows) if rows else 0.0,
               "methods": Counter(r["method"] for r in rows if r["ok"]),
               "wall_s": round(time.perf_counter() - began, 1)}
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
    else:
        print(f"imported {ok}/{len(rows)} ({summary['share']:.0%}); methods {dict(summary['methods'])}; "
              f"{summary['wall_s']} s")


if __name__ == "__main__":
    main()
