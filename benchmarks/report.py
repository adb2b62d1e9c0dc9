"""What the throughput benchmarks share: the device's name for the header, and the JSON report."""

from __future__ import annotations

import json
import time


def device_label(device: str) -> str:
    """``cpu``, or the CUDA device with its model name (``cuda:0 (NVIDIA H200)``)."""
    if device == "cpu":
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def finish(header: dict, results: list, began: float, as_json: bool, setup: str) -> bool:
    """Stamp the wall time into ``header``; print the report as JSON (and say it is done) or the table's first line:
    the device, torch's threads and ``setup`` (what was measured)."""
    header["wall_s"] = round(time.perf_counter() - began, 1)
    if as_json:
        print(json.dumps({"setup": header, "results": results}, indent=2, default=str))
    else:
        print(f"device {header['device']}, torch threads {header['torch_threads']}{setup}")
    return as_json
