"""Do short runs tell the truth? Cut a long MD run into consecutive short windows, analyse each as the transport
protocol would analyse a run of that length, and compare with the whole run.

The synthetic calibration (tests/test_diffusion_realistic.py) knows the true long-time D; a real model's trajectory
does not, so the reference here is the estimate from the whole long run. For each window length the script prints
every window (D* with its 95% interval or the upper bound, hops, MSD at the window's last frame) and then:
how many windows give a number, the geometric-mean ratio of their D* to the long run's, and how many 95% intervals
(values and bounds alike) contain the long run's D*. A calibrated estimator covers it in about 95% of windows; a
ratio well above 1 with low coverage means short runs are biased high with overconfident intervals.

Make the long run with the transport protocol and pass its frame log (one per temperature):

    ionscreen md STRUCTURE --model bundled:lipscl-student-fast --ion Li --protocol quick \\
        --temperatures-K 500 --production-ps 20 --out runs/md500
    python benchmarks/short_runs.py runs/md500/T500K/frames --windows-ps 2,4,10

The analysis settings are the run's own (its ``protocol.json``, two levels above the frame log) unless
``--preset`` names another. Measured figures are in ``screening/validation/conductivity.py`` (CPU protocol).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def window(data, start: int, n: int):
    """Frames ``start`` to ``start + n - 1`` of a :class:`screening.transport.framelog.FrameData`."""
    per_frame = {f.name: getattr(data, f.name)[start:start + n] for f in dataclasses.fields(data) if f.name != "meta"}
    return dataclasses.replace(data, **per_frame)


def interval(result) -> tuple[float, float] | None:
    """The 95% interval of D* (cm²/s) of a temperature result: the interval of a value, or [0, bound]."""
    if result.diffusivity_cm2_s is not None and result.diffusivity_ci95_cm2_s is not None:
        return tuple(result.diffusivity_ci95_cm2_s)
    if result.diffusivity_upper_bound_cm2_s is not None:
        return (0.0, float(result.diffusivity_upper_bound_cm2_s))
    return None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frame_logs", nargs="+", type=Path, help="frame-log directories (OUT/T<T>K/frames)")
    parser.add_argument("--windows-ps", default="2,4,10", help="window lengths, ps, comma-separated")
    parser.add_argument("--preset", default=None, help="analyse with this preset's settings instead of the run's")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args()

    from screening.ions import ion_charge
    from screening.transport.analysis import analyze_frames
    from screening.transport.framelog import FrameLog
    from screening.transport.protocol import AnalysisSettings, preset

    report = []
    for log_dir in args.frame_logs:
        data = FrameLog(log_dir).read()
        protocol_file = log_dir.parent.parent / "protocol.json"
        if args.preset:
            settings = preset(args.preset).analysis
        elif protocol_file.is_file():
            settings = AnalysisSettings(**json.loads(protocol_file.read_text())["analysis"])
        else:
            raise SystemExit(f"{protocol_file} not found: name the analysis settings with --preset")
        temperature = float(data.meta.get("temperature_K") or float(np.mean(data.temperature_K)))
        charge = ion_charge(data.meta["mobile_symbol"])  # the frame log names its ion; its charge is stated per ion
        dt_fs = float(data.times_fs[1] - data.times_fs[0])
        full, _ = analyze_frames(data, temperature_K=temperature, ion_charge=charge, settings=settings)
        reference = full.diffusivity_cm2_s
        total_ps = (data.times_fs[-1] - data.times_fs[0]) / 1000.0
        print(f"\n{log_dir}: {temperature:g} K, {data.mobile_A.shape[1]} mobile ions, {total_ps:g} ps; whole run: "
              f"D* {fmt(reference)} cm²/s, 95% {interval(full)}, {full.n_hops} hops, flags {list(full.flags)}")
        entry = {"frame_log": str(log_dir), "temperature_K": temperature, "run_ps": total_ps,
                 "reference_cm2_s": reference, "reference_ci95_cm2_s": interval(full), "windows": {}}
        if reference is None:
            print("  the whole run gives no value (only a bound): no reference to compare the windows with")
        for length_ps in (float(x) for x in args.windows_ps.split(",")):
            n = int(round(length_ps * 1000.0 / dt_fs)) + 1
            starts = list(range(0, data.n_frames - n + 1, n - 1))
            if not starts:
                continue
            rows = []
            for start in starts:
                part = window(data, start, n)
                result, _ = analyze_frames(part, temperature_K=temperature, ion_charge=charge, settings=settings)
                ci = interval(result)
                msd_end = float(((part.mobile_A[-1] - part.mobile_A[0]) ** 2).sum(axis=-1).mean())
                covers = None if reference is None or ci is None else bool(ci[0] <= reference <= ci[1])
                rows.append({"start_ps": part.times_fs[0] / 1000.0 - data.times_fs[0] / 1000.0,
                             "value_cm2_s": result.diffusivity_cm2_s, "ci95_cm2_s": ci, "n_hops": result.n_hops,
                             "msd_end_A2": msd_end, "flags": list(result.flags), "covers_reference": covers})
                print(f"  {length_ps:5.1f} ps from {rows[-1]['start_ps']:5.1f}: D* {fmt(result.diffusivity_cm2_s)} "
                      f"95% [{fmt(ci[0] if ci else None)}, {fmt(ci[1] if ci else None)}]  hops {result.n_hops:4d}  "
                      f"MSD(end) {msd_end:5.1f} Å²  covers {covers}  {','.join(result.flags)}")
            values = [r["value_cm2_s"] for r in rows if r["value_cm2_s"] is not None]
            judged = [r for r in rows if r["covers_reference"] is not None]
            summary = {"n_windows": len(rows), "n_values": len(values),
                       "geomean_ratio": (float(np.exp(np.mean(np.log(np.array(values) / reference))))
                                         if values and reference else None),
                       "n_covering": sum(r["covers_reference"] for r in judged), "n_judged": len(judged)}
            entry["windows"][f"{length_ps:g}"] = {"summary": summary, "rows": rows}
            ratio = "-" if summary["geomean_ratio"] is None else f"{summary['geomean_ratio']:.2f}"
            print(f"  {length_ps:g} ps windows: {summary['n_values']}/{summary['n_windows']} give a value, "
                  f"geometric-mean D*/D*(whole run) {ratio}, interval covers the whole run's D* in "
                  f"{summary['n_covering']}/{summary['n_judged']}")
        report.append(entry)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
