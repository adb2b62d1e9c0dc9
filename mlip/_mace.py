"""Import mace-torch in one place, in the right order, without its import-time prints.

``import mace`` must come before e3nn (mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn's
own constant loading needs under torch >= 2.6), and some mace modules print to stdout on import,
which would corrupt ``--json`` output; those prints go to the debug log instead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging

log = logging.getLogger(__name__)


@functools.cache
def import_mace():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        import mace
        import mace.calculators  # noqa: F401
        import mace.modules  # noqa: F401
        import mace.tools  # noqa: F401
    if buffer.getvalue().strip():
        log.debug("mace import output: %s", buffer.getvalue().strip())
    return mace


@contextlib.contextmanager
def quiet_stdout():
    """Send mace-torch's progress prints to the debug log (keeps stdout machine-readable)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        log.info("%s", buffer.getvalue().strip())
