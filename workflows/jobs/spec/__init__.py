"""The screening job file: its schema (:mod:`.schema`), reading it with errors by line (:mod:`.parse`), and building
the candidates it names (:mod:`.build`)."""

from screening.stages import Stage
from workflows.jobs.spec.build import (
    BuiltCandidates,
    CandidateFailure,
    build_candidates,
    iter_candidates,
)
from workflows.jobs.spec.parse import (
    JobSpecError,
    SpecProblem,
    load_job_spec,
    parse_job_spec,
)
from workflows.jobs.spec.schema import (
    NAME_PATTERN,
    CandidateSpec,
    Device,
    DopeSpec,
    JobSpec,
    NebSpec,
    ResourcesSpec,
    SubstituteSpec,
    TransportSpec,
)

__all__ = ["Stage", "JobSpec", "JobSpecError", "SpecProblem", "load_job_spec", "parse_job_spec", "build_candidates",
           "iter_candidates", "BuiltCandidates", "CandidateFailure", "CandidateSpec", "SubstituteSpec", "DopeSpec",
           "TransportSpec", "NebSpec", "ResourcesSpec", "Device", "NAME_PATTERN"]
