"""Option types the ``ionscreen`` commands share (typer reads them from the annotations)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster address (else RAY_ADDRESS, else ray_address in the config); "
                      "default: Ray in this process.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="Override the job file's number of model-holding workers.")]
