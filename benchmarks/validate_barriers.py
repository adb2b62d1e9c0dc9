"""The ``barriers`` validation set with one model, as ``ionscreen validate`` runs it, with the wall time.

Runs the default CPU subset (or ``--full``, or the first ``--limit`` entries) of
:class:`screening.validation.barriers.BarrierSet` one hop at a time, appends each record to
``OUT/records.jsonl`` as it finishes (a re-run skips the keys already there, so a killed run resumes), and prints
per hop (wall and CPU seconds: on a shared machine the CPU time is the cost) and at the end the figures of ``BarrierSet.summarise`` (MAE / RMSE per ion, the good/poor share at
0.5 eV) and a parity plot ``OUT/barriers_parity.png``. Usage (a shared machine: one thread, in the background):

    OMP_NUM_THREADS=1 nohup python benchmarks/validate_barriers.py --model chgnet:0.3.0 --out bench-barriers &

Measured (CHGNet 0.3.0, one thread, the 2-core machine shared with a training run and other tests, load 3-7):
the 42-hop subset took 95 min of wall time and 65 min of CPU (15 s to 7.5 min per hop); 39 hops gave a barrier,
MAE 0.294 eV, RMSE 0.440 eV, mean signed error +0.019 eV, good/poor at 0.5 eV right for 74 %. Again on 2026-12-06
(one thread, the other core mostly idle): 33 min, the same figures to the last digit.

``--images N`` and ``--keys KEY ...`` rerun chosen hops with another band (an experiment, under its own
fingerprint). Is the three-image band why the errors are large? The ten longest hops of the subset (4.5-6.4 A)
with 7 images instead of 3 (``--images 7 --keys 017-jid17 399-jid400 085-jid85 025-jid25 535-jid536 087-jid87
205-jid205 154-jid154 320-jid321 231-jid232``): every barrier within 0.043 eV of the 3-image one (mean 0.01 eV), the
same hop unconverged. The errors are the model's, not the band's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chgnet:0.3.0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--full", action="store_true", help="every hop (GPU), not the CPU subset")
    parser.add_argument("--out", type=Path, default=Path("bench-barriers"))
    parser.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                        help="only these hops of the chosen entries (keys such as 017-jid17)")
    parser.add_argument("--images", type=int, default=None,
                        help="moving images of the band instead of the set's (an experiment: another fingerprint)")
    args = parser.parse_args()

    import torch

    from mlip.config import load_settings
    from screening.validation.barriers import VALIDATION_NEB, BarrierSet
    from mlip.loader import load_model
    from screening.validation.base import RunContext

    began = time.perf_counter()
    params = VALIDATION_NEB if args.images is None else VALIDATION_NEB.model_copy(update={"n_images": args.images})
    barrier_set = BarrierSet(params=params)
    entries = barrier_set.entries(limit=args.limit, full=args.full)
    if args.keys:
        unknown = sorted(set(args.keys) - {e.key for e in entries})
        if unknown:
            raise SystemExit(f"--keys: {', '.join(unknown)} not among the chosen hops")
        entries = [e for e in entries if e.key in set(args.keys)]
    loaded = load_model(args.model, load_settings())
    print(f"model {loaded.ref} ({loaded.family}, sha256 {loaded.sha256[:12]}), device {args.device}, torch threads "
          f"{torch.get_num_threads()}, {len(entries)} hops, NEB {barrier_set.params.model_dump(mode='json')}",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "records.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()] if journal.is_file() else []
    done = {r["key"] for r in records}
    wanted = {e.key for e in entries}
    records = [r for r in records if r["key"] in wanted]
    for i, entry in enumerate(entries):
        if entry.key in done:
            continue
        context = RunContext(model_ref=loaded.ref, model_sha256=loaded.sha256, loaded=loaded,
                             calculator=loaded.calculator, device=args.device, workdir=args.out / entry.key)
        cpu = time.process_time()
        record = barrier_set.run_entry(entry, context)
        record["cpu_s"] = time.process_time() - cpu  # what the hop costs on a machine others share
        records.append(record)
        with journal.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        predicted = record["predicted_barrier_eV"]
        print(f"[{i + 1}/{len(entries)}] {entry.key} {entry.label:<40} {entry.data['n_atoms']:>4} atoms  "
              f"DFT {record['reference_barrier_eV']:.3f}  model {'-' if predicted is None else f'{predicted:.3f}'}  "
              f"{record['status']} {','.join(record['flags'])}  {record['steps']} steps  {record['seconds']:.0f} s "
              f"(CPU {record['cpu_s']:.0f} s)"
              + (f"  ({record['error']})" if record.get("error") else ""), flush=True)
    figures = barrier_set.summarise(records)
    plots = barrier_set.plot(records, args.out, title=f"{loaded.ref}: barriers ({len(records)} hops)")
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2))

    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    print(f"\n{'ion':<4} {'n':>3} {'MAE_eV':>7} {'RMSE_eV':>7} {'MSE_eV':>7} {'class_ok':>8} {'failed':>6} {'flagged':>7}")
    for ion, f in figures["per_ion"].items():
        print(f"{ion:<4} {f['n']:>3} {fmt(f['mae_eV']):>7} {fmt(f['rmse_eV']):>7} {fmt(f['mean_signed_error_eV']):>7} "
              f"{fmt(f['classified_correctly_share'], '.2f'):>8} {f['n_failed']:>6} {f['n_flagged']:>7}")
    print(f"{'all':<4} {figures['n']:>3} {fmt(figures['mae_eV']):>7} {fmt(figures['rmse_eV']):>7} "
          f"{fmt(figures['mean_signed_error_eV']):>7} {fmt(figures['classified_correctly_share'], '.2f'):>8} "
          f"{figures['n_failed']:>6} {figures['n_flagged']:>7}")
    print(f"unflagged only: n {figures['unflagged']['n']}, MAE {fmt(figures['unflagged']['mae_eV'])} eV; "
          f"not converged {figures['n_not_converged']}, uncovered {figures['n_uncovered']}")
    cpu_total = sum(r.get("cpu_s", 0.0) for r in records)
    print(f"NEB wall time over the records {figures['seconds_total']:.0f} s (CPU {cpu_total:.0f} s); this run's wall time "
          f"{time.perf_counter() - began:.0f} s; plot {plots[0]}")


if __name__ == "__main__":
    main()
