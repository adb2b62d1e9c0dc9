"""Validation of a model against experiment and DFT: named sets (conductivity, barriers, frames) that one
command runs, resumes and reports the same way. See :mod:`screening.validation.base` for the protocol."""
