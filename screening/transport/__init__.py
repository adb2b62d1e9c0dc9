"""Ionic transport from molecular dynamics: protocol, resumable MD, diffusion and Arrhenius analysis."""
