"""Screening jobs: the job file (``spec``), planning and running (``run``), Ray execution (``execute``), one task
(``tasks``), the workers × threads layout (``layout``) and the progress display (``progress``)."""
