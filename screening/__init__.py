"""The science: candidates, MD protocol, diffusion analysis, NEB, ranking and result schemas."""
